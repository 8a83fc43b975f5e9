//! Commands about the network: identity, peers, following collections.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use oermesh::node::{ContentProgress, EquivocationView, GroupStatusView, Service};
use oermesh::progress::{human_duration, RateEstimate};

use super::output;

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
    /// Followed collections: version, resources and bytes here, state
    List,
    /// Each resource of a followed collection's newest version: complete or missing
    Status {
        id: String,
        /// On a terminal, first draw a bar of bytes here, rate and time left, until every
        /// resource is here (or Ctrl-C)
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// Members, their last challenges, and per kept collection the resources held by
    /// fewer members than its target
    Status,
}

pub fn group(service: &dyn Service, command: GroupCommand) -> Result<ExitCode> {
    match command {
        GroupCommand::Status => {
            let view = service.group_status()?;
            print_group(&mut std::io::stdout().lock(), &view)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_group(out: &mut dyn Write, view: &GroupStatusView) -> std::io::Result<()> {
    writeln!(out, "group {}  (this node: {})", view.name, view.peer_id)?;
    if !view.running {
        writeln!(
            out,
            "the daemon is not running: other members' holdings are not known; `oermesh daemon` asks them"
        )?;
    }
    for member in &view.members {
        let reach = match (member.reachable, member.counted) {
            (true, true) => "reachable, counted",
            (true, false) => "reachable, NOT COUNTED (failed or unanswered challenge)",
            (false, _) => "not reachable",
        };
        let free = member
            .free_bytes
            .map(|free| format!(", {} free", output::bytes(free)))
            .unwrap_or_default();
        writeln!(out, "member {}  {reach}{free}", member.peer_id)?;
        for challenge in &member.challenges {
            let reason = challenge
                .reason
                .as_deref()
                .map(|reason| format!(": {reason}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  challenge {}  {}  {}{reason}",
                challenge.at, challenge.outcome, challenge.resource
            )?;
        }
    }
    for collection in &view.collections {
        let version = match collection.seq {
            Some(seq) => format!("version {seq}"),
            None => "no version yet".into(),
        };
        writeln!(
            out,
            "collection {}  {version}  replicas {}: {}/{} resources at target, {} held here",
            collection.id,
            collection.replicas,
            collection.at_target,
            collection.resources,
            collection.held_here
        )?;
        for resource in &collection.below {
            let holders = if resource.holders.is_empty() {
                "held by no member".to_string()
            } else {
                format!("held by {}", resource.holders.join(", "))
            };
            writeln!(
                out,
                "  below {}: {}  {}  {holders}",
                collection.replicas, resource.content, resource.title
            )?;
        }
    }
    Ok(())
}

pub fn follow(service: &dyn Service, args: FollowArgs) -> Result<ExitCode> {
    let id = match (args.command, args.id) {
        (Some(FollowCommand::List), _) => return follow_list(service),
        (Some(FollowCommand::Status { id, watch }), _) => {
            if watch && super::show_progress() {
                watch_progress(service, &id)?;
            }
            return follow_status(service, &id);
        }
        (None, Some(id)) => id,
        (None, None) => anyhow::bail!("name the collection to follow, or `follow list`"),
    };
    let view = service.follow(&id, args.metadata_only)?;
    let known = match view.seq {
        Some(seq) => format!("newest version known here: {seq}"),
        None => "no version known here yet".to_string(),
    };
    let what = if view.content {
        "every resource"
    } else {
        "metadata only"
    };
    let when = match (view.running, view.content) {
        (true, true) => "the daemon fetches new versions and their resources from peers",
        (true, false) => "the daemon fetches new versions from peers",
        (false, true) => {
            "the daemon fetches new versions and their resources from peers when it runs"
        }
        (false, false) => "the daemon fetches new versions from peers when it runs",
    };
    let already = if view.changed { "" } else { "already " };
    println!("{already}following {} ({what}); {known}; {when}", view.id);
    Ok(ExitCode::SUCCESS)
}

pub fn unfollow(service: &dyn Service, id: &str) -> Result<ExitCode> {
    let view = service.unfollow(id)?;
    let freed = if view.content {
        " (its resources are unpinned; `oermesh gc` reclaims the space)"
    } else {
        ""
    };
    println!("no longer following {}{freed}", view.id);
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
        if let Some(content) = &row.content {
            writeln!(out, "  {}", progress_line(content))?;
        }
        writeln!(out, "  {}", state_line(&row.state, row.reason.as_deref()))?;
        for evidence in &row.equivocations {
            writeln!(out, "  {}", equivocation_line(evidence))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn follow_status(service: &dyn Service, id: &str) -> Result<ExitCode> {
    let view = service.follow_status(id)?;
    let mut out = std::io::stdout().lock();
    let version = match view.seq {
        Some(seq) => format!("version {seq}"),
        None => "no version yet".to_string(),
    };
    writeln!(out, "{}  {version}  {}", view.id, view.mode)?;
    if let Some(content) = &view.content {
        writeln!(out, "{}", progress_line(content))?;
    }
    writeln!(out, "{}", state_line(&view.state, view.reason.as_deref()))?;
    for remote in &view.remote_pins {
        writeln!(out, "{}", remote_pin_line(remote))?;
    }
    for resource in &view.resources {
        let size = match resource.bytes_total {
            Some(total) if resource.state == "missing" => format!(
                "{} of {}",
                output::bytes(resource.bytes_held),
                output::bytes(total)
            ),
            Some(total) => output::bytes(total),
            None => "size not known yet".into(),
        };
        let name = resource.path.as_deref().unwrap_or(&resource.title);
        let replicas = resource
            .replicas
            .map(|n| format!("  {n} in the group"))
            .unwrap_or_default();
        writeln!(
            out,
            "{:<9}  {}  {name}  ({size}){replicas}",
            resource.state, resource.content
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How often `follow status --watch` asks for the numbers again.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The span the rate is measured over: long enough to smooth block arrivals, short
/// enough to follow a peer joining or leaving.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Redraws a bar from the followed collection's numbers until all of it is here. The
/// rate comes from successive readings, so it is the rate at which bytes land here,
/// whoever sends them.
fn watch_progress(service: &dyn Service, id: &str) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rate = RateEstimate::new(RATE_WINDOW);
    let watched = loop {
        let view = match service.follow_status(id) {
            Ok(view) => view,
            Err(err) => break Err(err.into()),
        };
        // Metadata only: no bytes to watch.
        let Some(content) = &view.content else {
            break Ok(());
        };
        rate.record(Instant::now(), content.bytes_held);
        bar.set_length(content.bytes_total);
        bar.set_position(content.bytes_held);
        bar.set_message(watch_message(content, &rate, &view.state));
        if content.complete == content.resources && content.sizes_unknown == 0 {
            break Ok(());
        }
        std::thread::sleep(WATCH_INTERVAL);
    };
    bar.finish_and_clear();
    watched
}

/// Rate, time left, resources and state, beside the bar.
fn watch_message(content: &ContentProgress, rate: &RateEstimate, state: &str) -> String {
    let speed = rate.bytes_per_sec().map_or_else(
        || "-".to_string(),
        |speed| format!("{}/s", output::bytes(speed as u64)),
    );
    // Resources whose size is not known yet would only add to the time left.
    let eta = match rate.eta(content.bytes_total) {
        Some(eta) if content.sizes_unknown == 0 => human_duration(eta),
        // Every known size is here but some are not known yet: nothing to say.
        Some(eta) if eta.is_zero() => "-".to_string(),
        Some(eta) => format!("at least {}", human_duration(eta)),
        None => "-".to_string(),
    };
    format!(
        "{speed}  eta {eta}  resources {}/{}  {state}",
        content.complete, content.resources
    )
}

fn progress_line(content: &ContentProgress) -> String {
    let unknown = if content.sizes_unknown > 0 {
        format!(" ({} sizes not known yet)", content.sizes_unknown)
    } else {
        String::new()
    };
    format!(
        "resources {}/{} complete, {} of {} here{unknown}",
        content.complete,
        content.resources,
        output::bytes(content.bytes_held),
        output::bytes(content.bytes_total)
    )
}

fn state_line(state: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason) => format!("state: {state}: {reason}"),
        None => format!("state: {state}"),
    }
}

/// The warning printed for equivocation evidence.
/// One remote pinning service's pin of a collection, for `follow status` and
/// `collection show`.
pub fn remote_pin_line(remote: &oermesh::pinning::RemotePin) -> String {
    let details = match &remote.details {
        Some(details) => format!(": {details}"),
        None => String::new(),
    };
    format!(
        "remote pin at {}: version {} {}{details}",
        remote.service,
        remote.seq,
        remote.status.as_str()
    )
}

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
