//! Commands of the record layer: keys, records, provenance, collections, trust.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};

use oermesh::keys;
use oermesh::node::{HistoryRow, RecordFields, RecordShow, RecordView, Service};
use oermesh::records::provenance;

use super::output;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create a publisher key
    Gen { name: String },
    /// List publisher keys with their did:key
    List,
    /// Copy a key to a file (to move it to another machine)
    Export {
        name: String,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Add a key from a file written by `key export`
    Import {
        file: PathBuf,
        /// Name to store it under [default: the file's name]
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RecordCommand {
    /// Show a record (or every record of a content CID), its verification and attribution
    Show { cid: String },
    /// Verify a record's encoding and signature; exits non-zero on any failure
    Verify { cid: String },
    /// Sign a retraction of one of your records (e.g. a licence takedown)
    Retract {
        cid: String,
        #[arg(long)]
        reason: String,
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum CollectionCommand {
    /// Start a new collection published with a key
    Create {
        name: String,
        #[arg(long, value_name = "NAME")]
        key: Option<String>,
    },
    /// Add records (or content that has exactly one record) to a collection
    Add {
        name: String,
        #[arg(required = true)]
        cids: Vec<String>,
        /// Where the entry sits in the collection, e.g. week-1/notes.pdf (one CID only)
        #[arg(long)]
        path: Option<String>,
        /// Display title of the entry (one CID only)
        #[arg(long)]
        title: Option<String>,
    },
    /// Remove a record from a collection
    Rm { name: String, cid: String },
    /// Sign the next version; prints the collection id
    Publish { name: String },
    /// Show a collection's newest version and its entries
    Show { id: String },
    /// List known collections: your own and those received
    List,
    /// Show the versions of a collection, newest first
    History { id: String },
}

#[derive(Subcommand)]
pub enum TrustCommand {
    /// Trust a publisher (did:key:z6Mk... or a collection id)
    Add { publisher: String },
    /// Stop trusting a publisher
    Rm { publisher: String },
    /// List trusted publishers
    List,
}

/// Fields of the signed record `add` writes when `--title` is given.
#[derive(Args, Default)]
pub struct RecordArgs {
    /// Sign a record for the content with this title
    #[arg(long)]
    pub title: Option<String>,
    /// Licence as an SPDX id: CC0-1.0, CC-BY-4.0, CC-BY-SA-4.0, CC-BY-SA-3.0-IGO, ..., or LicenseRef-...
    #[arg(long, value_name = "SPDX")]
    pub license: Option<String>,
    /// URL of a LicenseRef-... licence's terms
    #[arg(long, value_name = "URL")]
    pub license_url: Option<String>,
    /// Author, as "Name" or "Name <https://...>" (repeat for several)
    #[arg(long, value_name = "NAME")]
    pub author: Vec<String>,
    /// Where the work came from
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// Record CID of a work this one adapts (repeat for several)
    #[arg(long, value_name = "RECORD_CID")]
    pub based_on: Vec<String>,
    /// What was changed from the works in --based-on
    #[arg(long, value_name = "TEXT", default_value = "adapted")]
    pub changes: String,
    /// Language of the work (BCP 47, e.g. en, sw, ar, pt-BR)
    #[arg(long, value_name = "TAG")]
    pub language: Option<String>,
    /// A few sentences on what the work is and how to use it
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// learningResourceType, e.g. "lesson plan" (repeatable)
    #[arg(long = "type", value_name = "TYPE")]
    pub resource_type: Vec<String>,
    /// educationalLevel, e.g. "ISCED 2" (repeatable)
    #[arg(long, value_name = "LEVEL")]
    pub level: Vec<String>,
    /// typicalAgeRange, e.g. 12-14
    #[arg(long, value_name = "RANGE")]
    pub age: Option<String>,
    /// What the work teaches (repeatable)
    #[arg(long, value_name = "TEXT")]
    pub teaches: Vec<String>,
    /// Subject (repeatable)
    #[arg(long, value_name = "TEXT")]
    pub subject: Vec<String>,
    /// timeRequired as an ISO 8601 duration, e.g. PT45M
    #[arg(long, value_name = "DURATION")]
    pub time_required: Option<String>,
    /// Publisher key to sign with [default: the only key]
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
}

impl RecordArgs {
    pub fn wants_record(&self) -> bool {
        self.title.is_some() || self.license.is_some() || !self.author.is_empty()
    }

    pub fn fields(&self) -> RecordFields {
        RecordFields {
            title: self.title.clone(),
            license: self.license.clone(),
            license_url: self.license_url.clone(),
            authors: self.author.clone(),
            source: self.source.clone(),
            based_on: self.based_on.clone(),
            changes: self.changes.clone(),
            language: self.language.clone(),
            description: self.description.clone(),
            resource_types: self.resource_type.clone(),
            levels: self.level.clone(),
            age: self.age.clone(),
            teaches: self.teaches.clone(),
            subjects: self.subject.clone(),
            time_required: self.time_required.clone(),
            key: self.key.clone(),
        }
    }
}

pub fn key(service: &dyn Service, command: KeyCommand) -> Result<ExitCode> {
    match command {
        KeyCommand::Gen { name } => {
            let info = service.key_gen(&name)?;
            println!("{} {}", info.name, info.did);
        }
        KeyCommand::List => {
            for info in service.key_list()? {
                println!("{} {}", info.name, info.did);
            }
        }
        KeyCommand::Export { name, output } => {
            let exported = service.key_export(&name)?;
            let key = keys::parse_key_file_text(&exported.key_file)
                .map_err(|reason| anyhow!("the exported key is not valid: {reason}"))?;
            keys::write_key_file(&output, &key)?;
            println!(
                "exported {} ({}) to {}; keep this file secret",
                exported.name,
                exported.did,
                output.display()
            );
        }
        KeyCommand::Import { file, name } => {
            let name = keys::import_name(&file, name.as_deref())?;
            let key = keys::read_key_for_import(&file)?;
            let info = service.key_import(&name, &keys::key_file_text(&key))?;
            println!("{} {}", info.name, info.did);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn trust_mark(trusted: bool) -> &'static str {
    if trusted {
        "trusted"
    } else {
        "UNTRUSTED"
    }
}

fn print_record(out: &mut impl Write, view: &RecordView) -> Result<()> {
    writeln!(out, "record       {}", view.cid)?;
    writeln!(out, "content      {}", view.content)?;
    writeln!(out, "title        {}", view.title)?;
    if let Some(description) = &view.description {
        writeln!(out, "description  {description}")?;
    }
    writeln!(out, "language     {}", view.language)?;
    let authors: Vec<String> = view
        .authors
        .iter()
        .map(|a| match &a.url {
            Some(url) => format!("{} <{url}>", a.name),
            None => a.name.clone(),
        })
        .collect();
    writeln!(out, "authors      {}", authors.join(", "))?;
    match (&view.licence.name, &view.licence.url) {
        (Some(name), Some(url)) => {
            writeln!(out, "licence      {name} ({}) {url}", view.licence.id)?
        }
        _ => writeln!(out, "licence      {}", view.licence.id)?,
    }
    if let Some(source) = &view.source {
        writeln!(out, "source       {source}")?;
    }
    for parent in &view.based_on {
        writeln!(out, "based on     {} ({})", parent.record, parent.note)?;
    }
    let ed = &view.educational;
    let mut educational = Vec::new();
    for (label, values) in [
        ("type", &ed.learning_resource_type),
        ("level", &ed.educational_level),
        ("use", &ed.educational_use),
        ("teaches", &ed.teaches),
        ("subject", &ed.subjects),
    ] {
        if !values.is_empty() {
            educational.push(format!("{label}: {}", values.join(", ")));
        }
    }
    if let Some(age) = &ed.typical_age_range {
        educational.push(format!("age: {age}"));
    }
    if let Some(time) = &ed.time_required {
        educational.push(format!("time: {time}"));
    }
    if !educational.is_empty() {
        writeln!(out, "educational  {}", educational.join("; "))?;
    }
    writeln!(out, "created      {}", view.created)?;
    writeln!(
        out,
        "publisher    {} ({})",
        view.publisher,
        trust_mark(view.trusted)
    )?;
    writeln!(out, "signature    valid")?;
    if view.retracted {
        writeln!(out, "status       RETRACTED by its publisher")?;
    }
    writeln!(out, "attribution  {}", view.attribution)?;
    Ok(())
}

pub fn record(service: &dyn Service, command: RecordCommand) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        RecordCommand::Show { cid } => {
            let cid = output::parse_cid(&cid)?;
            for (index, shown) in service.record_show(&cid)?.iter().enumerate() {
                if index > 0 {
                    writeln!(out)?;
                }
                match shown {
                    RecordShow::Valid(view) => print_record(&mut out, view)?,
                    RecordShow::Invalid { cid, reason } => {
                        writeln!(out, "record       {cid}\nsignature    INVALID: {reason}")?
                    }
                }
            }
        }
        RecordCommand::Verify { cid } => {
            let cid = output::parse_cid(&cid)?;
            let check = service.record_verify(&cid)?;
            writeln!(
                out,
                "{cid}: valid signature by {} ({})",
                check.publisher,
                trust_mark(check.trusted)
            )?;
            if check.retracted {
                writeln!(out, "{cid}: retracted by its publisher")?;
                return Ok(ExitCode::FAILURE);
            }
        }
        RecordCommand::Retract { cid, reason, key } => {
            let cid = output::parse_cid(&cid)?;
            let retracted = service.record_retract(&cid, &reason, key.as_deref())?;
            writeln!(
                out,
                "retracted {} (retraction {})",
                retracted.record, retracted.retraction
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn provenance(service: &dyn Service, cid: &str) -> Result<ExitCode> {
    let cid = output::parse_cid(cid)?;
    let tree = service.provenance(&cid)?;
    let ok = matches!(tree.status, provenance::NodeStatus::Verified);
    print!("{}", provenance::render(&tree));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn collection(service: &dyn Service, command: CollectionCommand) -> Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        CollectionCommand::Create { name, key } => {
            let created = service.collection_create(&name, key.as_deref())?;
            writeln!(
                out,
                "created {}: its id will be {}",
                created.name, created.id
            )?;
        }
        CollectionCommand::Add {
            name,
            cids,
            path,
            title,
        } => {
            let edited = service.collection_add(&name, &cids, path.as_deref(), title.as_deref())?;
            writeln!(
                out,
                "{}: {} entries (not yet published)",
                edited.name, edited.count
            )?;
        }
        CollectionCommand::Rm { name, cid } => {
            let cid = output::parse_cid(&cid)?;
            service.collection_rm(&name, &cid)?;
            writeln!(out, "removed {cid} from {name} (not yet published)")?;
        }
        CollectionCommand::Publish { name } => {
            let published = service.collection_publish(&name)?;
            writeln!(out, "{}", published.id)?;
            eprintln!(
                "published version {} of {name} ({} entries), head {}",
                published.seq, published.entry_count, published.head
            );
        }
        CollectionCommand::Show { id } => {
            let view = service.collection_show(&id)?;
            writeln!(out, "collection  {}", view.id)?;
            writeln!(
                out,
                "publisher   {} ({})",
                view.publisher,
                trust_mark(view.trusted)
            )?;
            writeln!(out, "version     {} of {}", view.seq, view.time)?;
            writeln!(out, "head        {}", view.head)?;
            writeln!(out, "entries     {}", view.entries.len())?;
            if view.retracted_hidden > 0 {
                writeln!(out, "retracted   {} entries hidden", view.retracted_hidden)?;
            }
            for evidence in &view.equivocations {
                writeln!(out, "{}", super::network::equivocation_line(evidence))?;
            }
            for remote in &view.remote_pins {
                writeln!(out, "{}", super::network::remote_pin_line(remote))?;
            }
            for entry in &view.entries {
                let licence = entry.licence.as_deref().unwrap_or("(record not here)");
                let title = entry.title.as_deref().unwrap_or("");
                let path = entry
                    .path
                    .as_deref()
                    .map(|p| format!(" [{p}]"))
                    .unwrap_or_default();
                writeln!(out, "{}  {licence}  {title}{path}", entry.record)?;
            }
        }
        CollectionCommand::List => {
            for listing in service.collection_list()? {
                let version = match listing.seq {
                    Some(seq) => format!("version {seq}"),
                    None => "not published".to_string(),
                };
                let own = if listing.own { ", yours" } else { "" };
                writeln!(
                    out,
                    "{}  {version}  ({}{own})",
                    listing.id,
                    trust_mark(listing.trusted)
                )?;
            }
        }
        CollectionCommand::History { id } => {
            for step in service.collection_history(&id)? {
                match step {
                    HistoryRow::Version {
                        cid,
                        seq,
                        time,
                        entry_count,
                    } => writeln!(out, "{seq:>6}  {time}  {entry_count} entries  {cid}")?,
                    HistoryRow::Missing { cid } => {
                        writeln!(out, "     ?  earlier versions not held here (next: {cid})")?
                    }
                    HistoryRow::Invalid { cid, reason } => {
                        writeln!(out, "     !  {cid} is not a valid version: {reason}")?
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trust(service: &dyn Service, command: TrustCommand) -> Result<ExitCode> {
    match command {
        TrustCommand::Add { publisher } => {
            let did = service.trust_add(&publisher)?;
            println!("trusting {did}");
        }
        TrustCommand::Rm { publisher } => {
            let did = service.trust_rm(&publisher)?;
            println!("no longer trusting {did}");
        }
        TrustCommand::List => {
            for did in service.trust_list()? {
                println!("{did}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
