use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};

use oermesh::api::client::ApiClient;
use oermesh::node::{Node, NodeError, Service};
use oermesh::repo::{Repo, RepoError};

mod files;
mod network;
mod output;
mod publish;

/// A peer-to-peer, content-addressed node for Open Educational Resources.
#[derive(Parser)]
#[command(name = "oermesh", version, about, propagate_version = true)]
pub struct Cli {
    /// Repository directory [default: ~/.oermesh]
    #[arg(long, global = true, env = "OERMESH_REPO", value_name = "DIR")]
    repo: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository (config, node key, database)
    Init,
    /// Add a file, or a folder with -r, and pin it; prints CIDs
    Add(Box<files::AddArgs>),
    /// Write a file's bytes to standard output
    Cat {
        /// CID, optionally followed by /sub/path
        path: String,
    },
    /// Write a file or a whole folder tree to disk
    Get {
        /// CID, optionally followed by /sub/path
        path: String,
        /// Where to write it [default: the last path segment, or the CID]
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Get a file or folder tree from peers into the store (with a running daemon)
    Fetch {
        /// CID, optionally followed by /sub/path
        path: String,
        /// Pin it once all of it is here
        #[arg(long)]
        pin: bool,
        /// Longest wait, in seconds, for a peer that has a missing block
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// List a folder's entries with their sizes
    Ls {
        /// CID, optionally followed by /sub/path
        path: String,
    },
    /// Keep blocks from being removed by gc
    #[command(subcommand)]
    Pin(PinCommand),
    /// Remove every block no pin reaches; prints bytes freed
    Gc,
    /// Blocks, bytes, pins and disk space of the repository
    Stat,
    /// Re-hash every stored block; exits non-zero if any is corrupt or missing
    Verify,
    /// Write complete DAGs to a CARv1 file
    Export(files::ExportArgs),
    /// Verify and store every block of a CAR file, then pin its roots
    Import {
        /// The .car file
        file: PathBuf,
    },
    /// Publisher keys: gen, list, export, import
    #[command(subcommand)]
    Key(publish::KeyCommand),
    /// Signed licence and provenance records: show, verify, retract
    #[command(subcommand)]
    Record(publish::RecordCommand),
    /// Walk a record's is-based-on chain and print it as a tree
    Provenance {
        /// Record CID
        cid: String,
    },
    /// Versioned, signed collections of records
    #[command(subcommand)]
    Collection(publish::CollectionCommand),
    /// Publishers whose records and collections this node trusts
    #[command(subcommand)]
    Trust(publish::TrustCommand),
    /// The node's peer id and the addresses other nodes can dial
    Id,
    /// Connected peers (with a running daemon); add or remove static peers
    Peers {
        #[command(subcommand)]
        command: Option<network::PeersCommand>,
    },
    /// Mirror a collection from peers: every version and resource (or `--metadata-only`);
    /// `follow list`, `follow status ID`
    Follow(network::FollowArgs),
    /// Stop following a collection
    Unfollow {
        /// Collection id
        id: String,
    },
    /// The replication group this node is in: members, challenges, resources below target
    #[command(subcommand)]
    Group(network::GroupCommand),
    /// Run the node: peer connections and the web page, until Ctrl-C or SIGTERM.
    /// Creates the repository if there is none.
    Daemon(DaemonArgs),
}

#[derive(clap::Args)]
struct DaemonArgs {
    /// Address of the web page [default: daemon.http_listen in config.toml]
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Address to accept peer connections on; repeat for several [default: daemon.listen]
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<libp2p::Multiaddr>,
    /// Do not look for peers by multicast DNS
    #[arg(long)]
    no_mdns: bool,
    /// Peer to connect to and keep connected; repeat for several [default: daemon.static_peers]
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<libp2p::Multiaddr>,
}

#[derive(Subcommand)]
enum PinCommand {
    /// List pins and why each is held
    Ls,
    /// Pin CIDs (their blocks must be in the store)
    Add {
        #[arg(required = true)]
        cids: Vec<String>,
    },
    /// Remove the user's pins of CIDs
    Rm {
        #[arg(required = true)]
        cids: Vec<String>,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OERMESH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {}", output::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let repo_path = cli.repo.clone().unwrap_or_else(Repo::default_path);
    match cli.command {
        Command::Init => {
            let node = Node::init(&repo_path)?;
            println!(
                "initialized oermesh repository at {}",
                node.root().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(args) => daemon(&repo_path, args),
        Command::Add(args) if args.only_hash => files::add_only_hash(&repo_path, *args),
        command => {
            let service = connect(&repo_path)?;
            run_command(service.as_ref(), command)
        }
    }
}

/// How long a command waits for a daemon that holds the repository but whose API is
/// not up yet (it is starting).
const DAEMON_START_WAIT: Duration = Duration::from_secs(10);

/// The daemon holding the repository, if one runs; otherwise the repository itself.
fn connect(repo_path: &Path) -> Result<Box<dyn Service>> {
    if let Some(client) = ApiClient::find(repo_path)? {
        return Ok(Box::new(client));
    }
    match Node::open(repo_path) {
        Ok(node) => Ok(Box::new(node)),
        Err(NodeError::Repo(locked))
            if matches!(*locked, RepoError::Locked { daemon: true, .. }) =>
        {
            let deadline = Instant::now() + DAEMON_START_WAIT;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                if let Some(client) = ApiClient::find(repo_path)? {
                    return Ok(Box::new(client));
                }
            }
            Err(NodeError::Repo(locked).into())
        }
        Err(err) => Err(err.into()),
    }
}

fn run_command(service: &dyn Service, command: Command) -> Result<ExitCode> {
    match command {
        Command::Init | Command::Daemon(_) => unreachable!("handled before connecting"),
        Command::Add(args) => files::add(service, *args),
        Command::Cat { path } => files::cat(service, &path),
        Command::Get { path, output } => files::get(service, &path, output),
        Command::Ls { path } => files::ls(service, &path),
        Command::Fetch { path, pin, wait } => files::fetch(service, &path, pin, wait),
        Command::Export(args) => files::export(service, args),
        Command::Import { file } => files::import(service, &file),
        Command::Pin(command) => pin(service, command),
        Command::Key(command) => publish::key(service, command),
        Command::Record(command) => publish::record(service, command),
        Command::Provenance { cid } => publish::provenance(service, &cid),
        Command::Collection(command) => publish::collection(service, command),
        Command::Trust(command) => publish::trust(service, command),
        Command::Id => network::id(service),
        Command::Peers { command } => network::peers(service, command),
        Command::Follow(args) => network::follow(service, args),
        Command::Unfollow { id } => network::unfollow(service, &id),
        Command::Group(command) => network::group(service, command),
        Command::Gc => {
            let report = service.gc()?;
            println!(
                "removed {} blocks and {} orphan files, freed {}",
                report.blocks_removed,
                report.orphan_files_removed,
                output::bytes(report.bytes_freed)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stat => {
            let stat = service.stat()?;
            println!("repository  {}", stat.repository);
            println!(
                "blocks      {} ({} inline in the database)",
                stat.blocks, stat.inline_blocks
            );
            println!("bytes       {} ({})", stat.bytes, output::bytes(stat.bytes));
            println!("pins        {}", stat.pins);
            println!(
                "disk used   {} ({})",
                stat.disk_bytes,
                output::bytes(stat.disk_bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let report = service.verify()?;
            for damage in &report.damage {
                println!("{damage}");
            }
            println!(
                "checked {} blocks ({}): {}",
                report.blocks_checked,
                output::bytes(report.bytes_checked),
                if report.damage.is_empty() {
                    "all good".to_string()
                } else {
                    format!("{} problems", report.damage.len())
                }
            );
            Ok(if report.damage.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn daemon(repo_path: &Path, args: DaemonArgs) -> Result<ExitCode> {
    let (node, created) = Node::open_or_init(repo_path)?;
    if created {
        println!(
            "initialized oermesh repository at {}",
            node.root().display()
        );
    }
    let options = oermesh::daemon::DaemonOptions {
        http_listen: args.http,
        listen: (!args.listen.is_empty()).then_some(args.listen),
        mdns: args.no_mdns.then_some(false),
        static_peers: (!args.peers.is_empty()).then_some(args.peers),
    };
    tokio::runtime::Runtime::new()?.block_on(oermesh::daemon::run(node, options))?;
    Ok(ExitCode::SUCCESS)
}

fn pin(service: &dyn Service, command: PinCommand) -> Result<ExitCode> {
    match command {
        PinCommand::Ls => {
            let mut out = std::io::stdout().lock();
            for pin in service.pins()? {
                writeln!(out, "{} {}", pin.cid, pin.reasons.join(","))?;
            }
        }
        PinCommand::Add { cids } => {
            for text in cids {
                let cid = output::parse_cid(&text)?;
                service.pin_add(&cid)?;
                println!("pinned {cid}");
            }
        }
        PinCommand::Rm { cids } => {
            for text in cids {
                let cid = output::parse_cid(&text)?;
                let left = service.pin_rm(&cid)?;
                if left.is_empty() {
                    println!("unpinned {cid}");
                } else {
                    println!("{cid} is still pinned by {}", left.join(", "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether to draw a progress bar: only for people watching a terminal.
pub(crate) fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}
