//! Commands on files and folders: add, cat, get, ls, export, import.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use cid::Cid;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use oermesh::block::{BlockPut, MemoryBlocks};
use oermesh::car;
use oermesh::repo::Repo;
use oermesh::unixfs::importer::{self, Imported};
use oermesh::unixfs::profile::Profile;
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
    only_hash: bool,
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

fn profile_for(args: &AddArgs, default_profile: &str) -> Result<Profile> {
    let name = args.profile.as_deref().unwrap_or(default_profile);
    let mut profile = Profile::by_name(name).map_err(|err| anyhow!("{err}"))?;
    if let Some(version) = args.cid_version {
        profile = profile
            .with_cid_version(u64::from(version))
            .map_err(|err| anyhow!("{err}"))?;
    }
    if let Some(chunker) = &args.chunker {
        profile = profile
            .with_chunker(chunker)
            .map_err(|err| anyhow!("{err}"))?;
    }
    Ok(profile)
}

pub fn add(repo_path: &Path, args: AddArgs) -> Result<ExitCode> {
    if args.only_hash {
        if args.record.wants_record() {
            bail!("--only-hash stores nothing, so it cannot sign a record");
        }
        let profile = profile_for(&args, "unixfs-v1-2025")?;
        let sink = MemoryBlocks::discarding();
        let (root, entries) = import_with_progress(&args, &profile, &sink)?;
        print_added(args.quiet, &root, &entries);
        return Ok(ExitCode::SUCCESS);
    }
    let repo = Repo::open(repo_path)?;
    let profile = profile_for(&args, &repo.config().add.profile)?;
    let batch = repo.store().batch();
    let started = std::time::Instant::now();
    let (root, entries) = import_with_progress(&args, &profile, &batch)?;
    tracing::debug!(bytes = root.size, elapsed = ?started.elapsed(), "imported");
    let pinned_before = !repo.store().pin_reasons(&root.cid)?.is_empty();
    batch.commit_and_pin(&[root.cid], "user")?;
    if args.record.wants_record() {
        let record = match super::publish::sign_for_content(&repo, root.cid, &args.record) {
            Ok(record) => record,
            Err(err) => {
                // A refused record leaves the repository as it was: the content goes
                // back to unpinned (gc may remove it) unless it was pinned before.
                if !pinned_before {
                    repo.store().unpin(&root.cid, Some("user"))?;
                }
                return Err(err.context(format!("{}: nothing was added", args.path.display())));
            }
        };
        if args.quiet {
            println!("{}\n{record}", root.cid);
        } else {
            print_added(false, &root, &entries);
            println!("signed record {record}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    print_added(args.quiet, &root, &entries);
    Ok(ExitCode::SUCCESS)
}

type AddedEntries = Vec<(PathBuf, Cid)>;

fn import_with_progress(
    args: &AddArgs,
    profile: &Profile,
    sink: &impl BlockPut,
) -> Result<(Imported, AddedEntries)> {
    let bar = if super::show_progress() {
        let total = importer::total_bytes(&args.path, args.recursive).unwrap_or(0);
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut entries = Vec::new();
    let root = importer::import_path(
        &args.path,
        args.recursive,
        profile,
        sink,
        &mut |relative: &Path, imported: &Imported| {
            entries.push((relative.to_path_buf(), imported.cid))
        },
        &|done| bar.set_position(done),
    )?;
    bar.finish_and_clear();
    Ok((root, entries))
}

fn print_added(quiet: bool, root: &Imported, entries: &AddedEntries) {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if quiet {
        let _ = writeln!(out, "{}", root.cid);
        return;
    }
    // Entries arrive children first, each named relative to the parent of the added
    // path, so the root comes last under its own name.
    for (relative, cid) in entries {
        let _ = writeln!(out, "added {cid} {}", relative.display());
    }
}

pub fn cat(repo: &Repo, path: &str) -> Result<ExitCode> {
    let (root, sub) = output::split_cid_path(path)?;
    let cid = reader::resolve(repo.store(), &root, &sub)?;
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    match reader::read_file(repo.store(), &cid, &mut out)
        .map_err(anyhow::Error::from)
        .and_then(|_| Ok(out.flush()?))
    {
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

pub fn get(repo: &Repo, path: &str, output: Option<PathBuf>) -> Result<ExitCode> {
    let (root, sub) = output::split_cid_path(path)?;
    let cid = reader::resolve(repo.store(), &root, &sub)?;
    // Like `ipfs get`: named after the last path segment, or the CID itself.
    let dest = output.unwrap_or_else(|| {
        PathBuf::from(
            sub.rsplit('/')
                .find(|segment| !segment.is_empty())
                .map_or_else(|| root.to_string(), str::to_string),
        )
    });
    reader::get_tree(repo.store(), &cid, &dest)?;
    println!("saved {cid} to {}", dest.display());
    Ok(ExitCode::SUCCESS)
}

pub fn ls(repo: &Repo, path: &str) -> Result<ExitCode> {
    let (root, sub) = output::split_cid_path(path)?;
    let cid = reader::resolve(repo.store(), &root, &sub)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    for entry in reader::list_dir(repo.store(), &cid)? {
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

pub fn export(repo: &Repo, args: ExportArgs) -> Result<ExitCode> {
    if let [only] = args.cids.as_slice() {
        if let Ok(id) = only.parse::<oermesh::records::CollectionId>() {
            return write_car(&args.output, |out| {
                Ok(oermesh::transfer::export_collection(repo, &id, out)?)
            });
        }
    }
    let roots = args
        .cids
        .iter()
        .map(|text| output::parse_cid(text))
        .collect::<Result<Vec<_>>>()?;
    for root in &roots {
        if !repo.store().has(root)? {
            bail!("cannot export {root}: it is not in the store");
        }
    }
    write_car(&args.output, |out| {
        Ok(car::export_dag(repo.store(), &roots, out)?)
    })
}

/// Writes a CAR through a temp file, so a failed export leaves no partial file behind.
fn write_car(
    path: &Path,
    export: impl FnOnce(&mut BufWriter<File>) -> Result<car::ExportSummary>,
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

pub fn import(repo: &Repo, path: &Path) -> Result<ExitCode> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let report = oermesh::transfer::import_car(repo, io::BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("{}: nothing was imported", path.display()))?;
    for root in &report.pinned {
        println!("imported {root}");
    }
    for (id, seq, trusted) in &report.collections {
        let note = if *trusted {
            String::new()
        } else {
            format!(
                " (publisher not trusted: `oermesh trust add {}` to trust it)",
                id.publisher_did()
            )
        };
        println!("collection {id} version {seq}{note}");
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
