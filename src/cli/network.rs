//! Commands about the network: identity, peers, following collections.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use oermesh::node::{EquivocationView, Service};

#[derive(Subcommand)]
pub enum PeersCommand {
    /// Keep a peer connected from now on (running daemon and config.toml)
    Add {
        /// e.g. /ip4/192.168.1.20/tcp/4001, optionally ending in /p2p/PEER_ID
        addr: String,
    },
    /// Stop keeping a static peer connected (running daemon and config.toml)
    Rm { addr: String },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FollowArgs {
    #[command(subcommand)]
    command: Option<FollowCommand>,
    /// Collection id (publisher key/name), from `collection list` or the publisher
    #[arg(required = true)]
    id: Option<String>,
    /// Keep the versions, entry list and records, not the works themselves
    #[arg(long)]
    metadata_only: bool,
}

#[derive(Subcommand)]
pub enum FollowCommand {
    /// Followed collections, with the newest version known of each
    List,
}

pub fn follow(service: &dyn Service, args: FollowArgs) -> Result<ExitCode> {
    let id = match (args.command, args.id) {
        (Some(FollowCommand::List), _) => return follow_list(service),
        (None, Some(id)) => id,
        (None, None) => anyhow::bail!("name the collection to follow, or `follow list`"),
    };
    let view = service.follow(&id, args.metadata_only)?;
    let known = match view.seq {
        Some(seq) => format!("newest version known here: {seq}"),
        None => "no version known here yet".to_string(),
    };
    let when = if view.running {
        "the daemon fetches new versions from peers"
    } else {
        "the daemon fetches new versions from peers when it runs"
    };
    let already = if view.changed { "" } else { "already " };
    println!(
        "{already}following {} (metadata only); {known}; {when}",
        view.id
    );
    Ok(ExitCode::SUCCESS)
}

pub fn unfollow(service: &dyn Service, id: &str) -> Result<ExitCode> {
    let view = service.unfollow(id)?;
    println!("no longer following {}", view.id);
    Ok(ExitCode::SUCCESS)
}

fn follow_list(service: &dyn Service) -> Result<ExitCode> {
    let rows = service.follow_list()?;
    let mut out = std::io::stdout().lock();
    if rows.is_empty() {
        writeln!(out, "no collections followed")?;
    }
    for row in rows {
        let version = match (row.seq, row.entries) {
            (Some(seq), Some(entries)) => format!("version {seq} ({entries} entries)"),
            (Some(seq), None) => format!("version {seq}"),
            _ => "no version yet".to_string(),
        };
        let trust = if row.trusted {
            ""
        } else {
            "  (publisher no longer trusted: new versions are ignored)"
        };
        writeln!(
            out,
            "{}  {version}  {}  since {}{trust}",
            row.id, row.mode, row.since
        )?;
        for evidence in &row.equivocations {
            writeln!(out, "  {}", equivocation_line(evidence))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The warning printed for equivocation evidence.
pub fn equivocation_line(evidence: &EquivocationView) -> String {
    format!(
        "warning: the publisher signed two different versions numbered {}: {} (kept) and {} (refused)",
        evidence.seq, evidence.known, evidence.conflicting
    )
}

pub fn id(service: &dyn Service) -> Result<ExitCode> {
    let id = service.id()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "peer id  {}", id.peer_id)?;
    for addr in &id.addresses {
        writeln!(out, "address  {addr}")?;
    }
    if !id.running {
        writeln!(
            out,
            "(configured addresses: the daemon is not running; `oermesh daemon` starts it)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn peers(service: &dyn Service, command: Option<PeersCommand>) -> Result<ExitCode> {
    match command {
        None => list(service),
        Some(PeersCommand::Add { addr }) => {
            let edit = service.peers_add(&addr)?;
            if edit.running {
                println!("added static peer {} (dialling it now)", edit.addr);
            } else {
                println!(
                    "added static peer {} (dialled when the daemon starts)",
                    edit.addr
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(PeersCommand::Rm { addr }) => {
            let edit = service.peers_rm(&addr)?;
            println!("removed static peer {}", edit.addr);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line per peer: id, addresses, round-trip time, software, how it was found.
fn list(service: &dyn Service) -> Result<ExitCode> {
    let peers = service.peers()?;
    let mut out = std::io::stdout().lock();
    if peers.is_empty() {
        writeln!(out, "no peers connected")?;
        return Ok(ExitCode::SUCCESS);
    }
    for peer in peers {
        let rtt = peer
            .rtt_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.1} ms"));
        let mut line = format!(
            "{}  {}  {}  {}  found by {}",
            peer.peer_id,
            peer.addresses.join(","),
            rtt,
            peer.agent.as_deref().unwrap_or("-"),
            peer.found_by.join(",")
        );
        if peer.compatible == Some(false) {
            line.push_str(&format!(
                "  (not used: speaks {})",
                peer.protocol_version
                    .as_deref()
                    .unwrap_or("an unknown protocol")
            ));
        }
        writeln!(out, "{line}")?;
    }
    Ok(ExitCode::SUCCESS)
}
