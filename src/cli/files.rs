//! Commands on files and folders: add, cat, get, ls, export, import.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cid::Cid;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use oermesh::block::{codec, BlockError, BlockGet, MemoryBlocks};
use oermesh::car;
use oermesh::dag_pb::PbNode;
use oermesh::node::service::ServiceBlocks;
use oermesh::node::{
    export_target, resolve_profile, walk_into, AddEvent, AddOptions, FetchOptions, Service,
};
use oermesh::unixfs::importer::{self, Imported, TreeBuilder};
use oermesh::unixfs::reader;

use super::output;

#[derive(Args)]
pub struct AddArgs {
    /// File or folder to add
    path: PathBuf,
    /// Add a folder and everything in it
    #[arg(short, long)]
    recursive: bool,
    /// Print only the root CID
    #[arg(short = 'Q', long)]
    quiet: bool,
    /// Only compute the CIDs; store nothing (works without a repository)
    #[arg(short = 'n', long)]
    pub only_hash: bool,
    /// Block layout: unixfs-v1-2025 (default) or unixfs-v0-2015
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// CID version, as in `ipfs add --cid-version` (1 also turns on raw leaves)
    #[arg(long, value_name = "0|1")]
    cid_version: Option<u8>,
    /// Chunker, as in `ipfs add --chunker`: size-N (bytes per chunk)
    #[arg(long, value_name = "size-N")]
    chunker: Option<String>,
    #[command(flatten)]
    record: super::publish::RecordArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Root CIDs whose complete DAGs go into the file
    #[arg(required = true)]
    cids: Vec<String>,
    /// The CAR file to write
    #[arg(short, long, value_name = "FILE.car")]
    output: PathBuf,
}

impl AddArgs {
    fn options(&self) -> AddOptions {
        AddOptions {
            profile: self.profile.clone(),
            cid_version: self.cid_version,
            chunker: self.chunker.clone(),
            record: self.record.wants_record().then(|| self.record.fields()),
        }
    }
}

/// `add --only-hash`: CIDs without storing anything, so without the daemon. The profile
/// is the repository's default when there is a repository.
pub fn add_only_hash(repo_path: &Path, args: AddArgs) -> Result<ExitCode> {
    if args.record.wants_record() {
        bail!("--only-hash stores nothing, so it cannot sign a record");
    }
    let config_path = repo_path.join("config.toml");
    let default_profile = if config_path.is_file() {
        oermesh::config::Config::load(&config_path)?.add.profile
    } else {
        oermesh::config::Config::default().add.profile
    };
    let profile = resolve_profile(&args.options(), &default_profile)?;
    let sink = MemoryBlocks::discarding();
    let bar = progress_bar(&args);
    let mut entries = Vec::new();
    let root = {
        let mut on_entry = |path: &str, imported: &Imported| {
            entries.push((path.to_string(), imported.cid));
        };
        let progress = |done| bar.set_position(done);
        let mut builder = TreeBuilder::new(&profile, &sink, &mut on_entry, &progress);
        importer::walk(&args.path, args.recursive, &mut builder)?;
        builder.finish()?
    };
    bar.finish_and_clear();
    print_added(args.quiet, &root.cid, &entries);
    Ok(ExitCode::SUCCESS)
}

pub fn add(service: &dyn Service, args: AddArgs) -> Result<ExitCode> {
    let bar = progress_bar(&args);
    let mut entries = Vec::new();
    let started = std::time::Instant::now();
    let added = service.add(
        &args.options(),
        &mut |sink| walk_into(&args.path, args.recursive, sink),
        &mut |event| match event {
            AddEvent::Progress { bytes } => bar.set_position(bytes),
            AddEvent::Entry { path, cid } => entries.push((path, cid)),
        },
    );
    bar.finish_and_clear();
    let outcome = match added {
        Ok(outcome) => outcome,
        // With a record asked for, a failure anywhere means the repository is as it was.
        Err(err) if args.record.wants_record() => {
            return Err(anyhow::Error::from(err)
                .context(format!("{}: nothing was added", args.path.display())))
        }
        Err(err) => return Err(err.into()),
    };
    tracing::debug!(bytes = outcome.size, elapsed = ?started.elapsed(), "added");
    for warning in &outcome.warnings {
        eprintln!("warning: parent {}: {}", warning.parent, warning.message);
    }
    match outcome.record {
        Some(record) if args.quiet => println!("{}\n{record}", outcome.root),
        Some(record) => {
            print_added(false, &outcome.root, &entries);
            println!("signed record {record}");
        }
        None => print_added(args.quiet, &outcome.root, &entries),
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(args: &AddArgs) -> ProgressBar {
    if !super::show_progress() {
        return ProgressBar::hidden();
    }
    bytes_bar(Some(
        importer::total_bytes(&args.path, args.recursive).unwrap_or(0),
    ))
}

/// A bar of bytes done out of `total`, with rate and time left; without a total (not
/// known cheaply), a spinner with bytes and rate.
fn bytes_bar(total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ),
        None => (
            ProgressBar::no_length(),
            "{spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Shown while the store is checked for every block (a daemon gets missing ones from
/// peers meanwhile), before the bytes are written.
fn fetch_spinner() -> ProgressBar {
    if !super::show_progress() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message("looking for missing blocks");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// The bytes of the whole DAG under `cid`, as its root block declares them (the block
/// itself and each link's cumulative size): what `get` reads, block by block. `None`
/// when a link does not declare its size.
fn dag_bytes(blocks: &dyn BlockGet, cid: &Cid) -> Option<u64> {
    let block = blocks.get_block(cid).ok()?;
    if cid.codec() != codec::DAG_PB {
        return Some(block.len() as u64);
    }
    let node = PbNode::decode(&block).ok()?;
    node.links.iter().try_fold(block.len() as u64, |sum, link| {
        Some(sum.saturating_add(link.tsize?))
    })
}

/// Blocks handed to the reader, each counted on the bar as it passes.
struct CountedBlocks<'a> {
    blocks: &'a (dyn BlockGet + Sync),
    bar: &'a ProgressBar,
}

impl BlockGet for CountedBlocks<'_> {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        let data = self.blocks.get_block(cid)?;
        self.bar.inc(data.len() as u64);
        Ok(data)
    }
}

/// A writer that counts the bytes through it on the bar.
struct CountedWriter<'a, W: Write> {
    out: W,
    bar: &'a ProgressBar,
}

impl<W: Write> Write for CountedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        self.bar.inc(written as u64);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn print_added(quiet: bool, root: &Cid, entries: &[(String, Cid)]) {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if quiet {
        let _ = writeln!(out, "{root}");
        return;
    }
    // Entries arrive children first, each named relative to the parent of the added
    // path, so the root comes last under its own name.
    for (path, cid) in entries {
        let _ = writeln!(out, "added {cid} {path}");
    }
}

/// Makes the DAG `root/sub` names complete in the store: a daemon gets what is missing
/// from peers; without one, everything must be here already.
fn make_complete(service: &dyn Service, root: &Cid, sub: &str, progress: bool) -> Result<()> {
    let spinner = if progress {
        fetch_spinner()
    } else {
        ProgressBar::hidden()
    };
    let fetched = service.fetch(&FetchOptions {
        cid: *root,
        path: sub.to_string(),
        pin: false,
        wait_secs: None,
    });
    spinner.finish_and_clear();
    fetched?;
    Ok(())
}

pub fn fetch(
    service: &dyn Service,
    path: &str,
    pin: bool,
    wait_secs: Option<u64>,
) -> Result<ExitCode> {
    let (root, sub) = output::split_cid_path(path)?;
    let fetched = service.fetch(&FetchOptions {
        cid: root,
        path: sub,
        pin,
        wait_secs,
    })?;
    let pinned = if pin { ", pinned" } else { "" };
    if fetched.blocks == 0 {
        println!("{} was all here{pinned}", fetched.target);
    } else {
        println!(
            "fetched {}: {} blocks ({}) from {} peers{pinned}",
            fetched.target,
            fetched.blocks,
            output::bytes(fetched.bytes),
            fetched.peers
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cat(service: &dyn Service, path: &str) -> Result<ExitCode> {
    let blocks = ServiceBlocks(service);
    let (root, sub) = output::split_cid_path(path)?;
    // Bytes on the terminal would be drawn over: a bar only when they go elsewhere.
    let progress = super::show_progress() && !io::stdout().is_terminal();
    make_complete(service, &root, &sub, progress)?;
    let cid = reader::resolve(&blocks, &root, &sub)?;
    let bar = if progress {
        bytes_bar(reader::stat(&blocks, &cid).ok().map(|entry| entry.size))
    } else {
        ProgressBar::hidden()
    };
    let stdout = io::stdout();
    let mut out = CountedWriter {
        out: BufWriter::with_capacity(1 << 20, stdout.lock()),
        bar: &bar,
    };
    let written = service
        .cat(&cid, &mut out)
        .map_err(anyhow::Error::from)
        .and_then(|_| Ok(out.flush()?));
    bar.finish_and_clear();
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(err) if is_broken_pipe(&err) => Ok(ExitCode::SUCCESS),
        Err(err) => Err(err),
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

pub fn get(service: &dyn Service, path: &str, output: Option<PathBuf>) -> Result<ExitCode> {
    let blocks = ServiceBlocks(service);
    let (root, sub) = output::split_cid_path(path)?;
    let progress = super::show_progress();
    make_complete(service, &root, &sub, progress)?;
    let cid = reader::resolve(&blocks, &root, &sub)?;
    // Like `ipfs get`: named after the last path segment, or the CID itself.
    let dest = output.unwrap_or_else(|| {
        PathBuf::from(
            sub.rsplit('/')
                .find(|segment| !segment.is_empty())
                .map_or_else(|| root.to_string(), str::to_string),
        )
    });
    let bar = if progress {
        bytes_bar(dag_bytes(&blocks, &cid))
    } else {
        ProgressBar::hidden()
    };
    let written = reader::get_tree(
        &CountedBlocks {
            blocks: &blocks,
            bar: &bar,
        },
        &cid,
        &dest,
    );
    bar.finish_and_clear();
    written?;
    println!("saved {cid} to {}", dest.display());
    Ok(ExitCode::SUCCESS)
}

pub fn ls(service: &dyn Service, path: &str) -> Result<ExitCode> {
    let blocks = ServiceBlocks(service);
    let (root, sub) = output::split_cid_path(path)?;
    let cid = reader::resolve(&blocks, &root, &sub)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for entry in reader::list_dir(&blocks, &cid)? {
        let suffix = if entry.kind == reader::EntryKind::Directory {
            "/"
        } else {
            ""
        };
        writeln!(
            out,
            "{} {:>12} {}{suffix}",
            entry.cid, entry.size, entry.name
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn export(service: &dyn Service, args: ExportArgs) -> Result<ExitCode> {
    let target = export_target(&args.cids)?;
    write_car(&args.output, |out| Ok(service.export(&target, out)?))
}

/// Writes a CAR through a temp file, so a failed export leaves no partial file behind.
fn write_car(
    path: &Path,
    export: impl FnOnce(&mut dyn Write) -> Result<car::ExportSummary>,
) -> Result<ExitCode> {
    let tmp = path.with_extension("car.partial");
    let result = (|| -> Result<car::ExportSummary> {
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let summary = export(&mut out)?;
        let file = out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(summary)
    })();
    match result {
        Ok(summary) => {
            println!(
                "exported {} blocks ({}) to {}",
                summary.blocks,
                output::bytes(summary.bytes),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}

pub fn import(service: &dyn Service, path: &Path) -> Result<ExitCode> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let report = service
        .import(&mut file)
        .with_context(|| format!("{}: nothing was imported", path.display()))?;
    for root in &report.pinned {
        println!("imported {root}");
    }
    for collection in &report.collections {
        let note = if collection.trusted {
            String::new()
        } else {
            format!(
                " (publisher not trusted: `oermesh trust add {}` to trust it)",
                collection.publisher
            )
        };
        println!(
            "collection {} version {}{note}",
            collection.id, collection.seq
        );
    }
    if report.records > 0 || report.retractions > 0 {
        println!(
            "{} records and {} retractions verified",
            report.records, report.retractions
        );
    }
    println!(
        "{} blocks ({}) verified and stored",
        report.blocks,
        output::bytes(report.bytes)
    );
    Ok(ExitCode::SUCCESS)
}
