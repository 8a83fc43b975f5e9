//! Commands of the record layer: keys, records, provenance, collections, trust.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use cid::Cid;
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;

use oermesh::keys;
use oermesh::records::book::RecordView;
use oermesh::records::provenance;
use oermesh::records::{
    Author, BasedOn, CollectionId, Educational, Entry, RecordBook, RecordDraft, RecordError,
};
use oermesh::repo::Repo;
use oermesh::store::Store;

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
}

/// The publisher key named, or the only one there is.
fn signing_key(repo: &Repo, name: Option<&str>) -> Result<(String, SigningKey)> {
    let dir = repo.keys_dir();
    let name = match name {
        Some(name) => name.to_string(),
        None => {
            let known = keys::list(&dir)?;
            match known.as_slice() {
                [] => bail!("no publisher key yet: create one with `oermesh key gen NAME`"),
                [only] => only.name.clone(),
                several => bail!(
                    "several publisher keys ({}): choose one with --key",
                    several
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let key = keys::load(&dir, &name)?;
    Ok((name, key))
}

fn parse_author(text: &str) -> Result<Author> {
    let text = text.trim();
    if let Some((name, rest)) = text.split_once('<') {
        let url = rest
            .strip_suffix('>')
            .ok_or_else(|| anyhow!("author `{text}`: expected \"Name <URL>\""))?;
        Ok(Author {
            name: name.trim().to_string(),
            url: Some(url.trim().to_string()),
        })
    } else {
        Ok(Author {
            name: text.to_string(),
            url: None,
        })
    }
}

/// Signs the record `add` was asked for. Returns the record CID.
pub fn sign_for_content(repo: &Repo, content: Cid, args: &RecordArgs) -> Result<Cid> {
    let title = args
        .title
        .clone()
        .ok_or_else(|| anyhow!("a record needs --title"))?;
    let licence = args
        .license
        .clone()
        .ok_or_else(|| anyhow!("a record needs --license (an SPDX id such as CC-BY-4.0)"))?;
    if args.author.is_empty() {
        bail!("a record needs at least one --author");
    }
    let authors = args
        .author
        .iter()
        .map(|a| parse_author(a))
        .collect::<Result<Vec<_>>>()?;
    let based_on = args
        .based_on
        .iter()
        .map(|text| {
            Ok(BasedOn {
                record: output::parse_cid(text)?,
                note: args.changes.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let draft = RecordDraft {
        content,
        title,
        description: args.description.clone(),
        language: args.language.clone().unwrap_or_else(|| "und".to_string()),
        authors,
        licence,
        licence_url: args.license_url.clone(),
        source: args.source.clone(),
        based_on,
        educational: Educational {
            learning_resource_type: args.resource_type.clone(),
            educational_level: args.level.clone(),
            educational_use: Vec::new(),
            typical_age_range: args.age.clone(),
            teaches: args.teaches.clone(),
            subjects: args.subject.clone(),
            time_required: args.time_required.clone(),
        },
        created: None,
    };
    let (_, key) = signing_key(repo, args.key.as_deref())?;
    let signed = repo.records()?.sign_record(&key, draft)?;
    repo.store().flush()?;
    for warning in &signed.warnings {
        eprintln!("warning: parent {}: {}", warning.parent, warning.message);
    }
    Ok(signed.cid)
}

pub fn key(repo_path: &Path, command: KeyCommand) -> Result<ExitCode> {
    let repo = Repo::open(repo_path)?;
    let dir = repo.keys_dir();
    match command {
        KeyCommand::Gen { name } => {
            let info = keys::generate(&dir, &name)?;
            println!("{} {}", info.name, info.did);
        }
        KeyCommand::List => {
            for info in keys::list(&dir)? {
                println!("{} {}", info.name, info.did);
            }
        }
        KeyCommand::Export { name, output } => {
            let info = keys::export(&dir, &name, &output)?;
            println!(
                "exported {} ({}) to {}; keep this file secret",
                info.name,
                info.did,
                output.display()
            );
        }
        KeyCommand::Import { file, name } => {
            let info = keys::import(&dir, &file, name.as_deref())?;
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
    let record = &view.record;
    writeln!(out, "record       {}", view.cid)?;
    writeln!(out, "content      {}", record.content)?;
    writeln!(out, "title        {}", record.title)?;
    if let Some(description) = &record.description {
        writeln!(out, "description  {description}")?;
    }
    writeln!(out, "language     {}", record.language)?;
    let authors: Vec<String> = record
        .authors
        .iter()
        .map(|a| match &a.url {
            Some(url) => format!("{} <{url}>", a.name),
            None => a.name.clone(),
        })
        .collect();
    writeln!(out, "authors      {}", authors.join(", "))?;
    match record.parsed_licence() {
        Ok(licence) => writeln!(
            out,
            "licence      {} ({}) {}",
            licence.name(),
            licence.spdx_id(),
            licence.url()
        )?,
        Err(_) => writeln!(out, "licence      {}", record.licence)?,
    }
    if let Some(source) = &record.source {
        writeln!(out, "source       {source}")?;
    }
    for parent in &record.based_on {
        writeln!(out, "based on     {} ({})", parent.record, parent.note)?;
    }
    let ed = &record.educational;
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
    writeln!(out, "created      {}", record.created)?;
    writeln!(
        out,
        "publisher    {} ({})",
        record.publisher,
        trust_mark(view.trusted)
    )?;
    writeln!(out, "signature    valid")?;
    if view.retracted {
        writeln!(out, "status       RETRACTED by its publisher")?;
    }
    writeln!(out, "attribution  {}", view.attribution)?;
    Ok(())
}

pub fn record(repo_path: &Path, command: RecordCommand) -> Result<ExitCode> {
    let repo = Repo::open(repo_path)?;
    let book = repo.records()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        RecordCommand::Show { cid } => {
            let cid = output::parse_cid(&cid)?;
            if cid.codec() == oermesh::block::codec::DAG_CBOR {
                print_record(&mut out, &book.show_record(&cid)?)?;
            } else {
                let listings = book.records_for_content(&cid)?;
                if listings.is_empty() {
                    bail!("no record describes {cid}");
                }
                for (index, listing) in listings.iter().enumerate() {
                    if index > 0 {
                        writeln!(out)?;
                    }
                    match book.show_record(&listing.cid) {
                        Ok(view) => print_record(&mut out, &view)?,
                        Err(err) => writeln!(
                            out,
                            "record       {}\nsignature    INVALID: {err}",
                            listing.cid
                        )?,
                    }
                }
            }
        }
        RecordCommand::Verify { cid } => {
            let cid = output::parse_cid(&cid)?;
            let record = book
                .verify_record(&cid)
                .with_context(|| format!("record {cid} does not verify"))?;
            let trusted = book.is_trusted(&record.publisher);
            writeln!(
                out,
                "{cid}: valid signature by {} ({})",
                record.publisher,
                trust_mark(trusted)
            )?;
            if book.is_retracted(&cid)? {
                writeln!(out, "{cid}: retracted by its publisher")?;
                return Ok(ExitCode::FAILURE);
            }
        }
        RecordCommand::Retract { cid, reason, key } => {
            let cid = output::parse_cid(&cid)?;
            let (_, key) = signing_key(&repo, key.as_deref())?;
            let retraction = book.retract(&key, &cid, &reason)?;
            repo.store().flush()?;
            writeln!(out, "retracted {cid} (retraction {retraction})")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn provenance(repo_path: &Path, cid: &str) -> Result<ExitCode> {
    let repo = Repo::open(repo_path)?;
    let cid = output::parse_cid(cid)?;
    let tree = repo.records()?.provenance(&cid);
    let ok = matches!(tree.status, provenance::NodeStatus::Verified);
    print!("{}", provenance::render(&tree));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn parse_collection_id(text: &str) -> Result<CollectionId> {
    text.trim()
        .parse::<CollectionId>()
        .map_err(|err| anyhow!("{err}"))
}

/// A record CID, or content that exactly one record describes.
fn entry_record(book: &RecordBook<Store>, text: &str) -> Result<Cid> {
    let cid = output::parse_cid(text)?;
    if book.summary(&cid)?.is_some() {
        return Ok(cid);
    }
    let listings = book.records_for_content(&cid)?;
    match listings.as_slice() {
        [only] => Ok(only.cid),
        [] => bail!("{cid} is neither a known record nor content with a record: sign one with `oermesh add --title ...`"),
        _ => bail!("{cid} has several records: name the record CID (see `oermesh record show {cid}`)"),
    }
}

pub fn collection(repo_path: &Path, command: CollectionCommand) -> Result<ExitCode> {
    let repo = Repo::open(repo_path)?;
    let book = repo.records()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        CollectionCommand::Create { name, key } => {
            let (key_name, key) = signing_key(&repo, key.as_deref())?;
            let id = book.create_collection(&name, &key_name, &key.verifying_key())?;
            repo.store().flush()?;
            writeln!(out, "created {name}: its id will be {id}")?;
        }
        CollectionCommand::Add {
            name,
            cids,
            path,
            title,
        } => {
            if cids.len() > 1 && (path.is_some() || title.is_some()) {
                bail!("--path and --title apply to one entry: add one CID at a time to set them");
            }
            let mut entries = Vec::with_capacity(cids.len());
            for text in &cids {
                let mut entry = Entry::new(entry_record(&book, text)?);
                entry.path = path.clone();
                entry.title = title.clone();
                entries.push(entry);
            }
            let outcome = book.add_entries(&name, entries)?;
            repo.store().flush()?;
            writeln!(out, "{name}: {} entries (not yet published)", outcome.count)?;
        }
        CollectionCommand::Rm { name, cid } => {
            let cid = output::parse_cid(&cid)?;
            if !book.remove_entry(&name, &cid)? {
                bail!("{cid} is not in collection {name}");
            }
            repo.store().flush()?;
            writeln!(out, "removed {cid} from {name} (not yet published)")?;
        }
        CollectionCommand::Publish { name } => {
            let info = book.draft_info(&name)?;
            let key = keys::load(&repo.keys_dir(), &info.state.key_name)?;
            let published = book.publish(&name, &key)?;
            book.warm_listing(&published.id);
            repo.store().flush()?;
            writeln!(out, "{}", published.id)?;
            eprintln!(
                "published version {} of {name} ({} entries), head {}",
                published.seq, published.entry_count, published.head
            );
        }
        CollectionCommand::Show { id } => {
            let id = parse_collection_id(&id)?;
            let view = book.collection_show(&id).map_err(|err| match err {
                RecordError::UnknownCollection(_) => {
                    anyhow!("no published version of {id} is known here")
                }
                other => other.into(),
            })?;
            writeln!(out, "collection  {}", view.id)?;
            writeln!(
                out,
                "publisher   {} ({})",
                view.id.publisher_did(),
                trust_mark(view.trusted)
            )?;
            writeln!(out, "version     {} of {}", view.seq, view.time)?;
            writeln!(out, "head        {}", view.head)?;
            writeln!(out, "entries     {}", view.entries.len())?;
            if view.retracted_hidden > 0 {
                writeln!(out, "retracted   {} entries hidden", view.retracted_hidden)?;
            }
            for entry in &view.entries {
                let licence = entry
                    .summary
                    .as_ref()
                    .map(|s| s.licence.as_str())
                    .unwrap_or("(record not here)");
                let title = entry.title().unwrap_or("");
                let path = entry
                    .entry
                    .path
                    .as_deref()
                    .map(|p| format!(" [{p}]"))
                    .unwrap_or_default();
                writeln!(out, "{}  {licence}  {title}{path}", entry.entry.record)?;
            }
        }
        CollectionCommand::List => {
            for listing in book.collection_list()? {
                let version = match listing.newest {
                    Some((seq, _)) => format!("version {seq}"),
                    None => "not published".to_string(),
                };
                let own = if listing.draft.is_some() {
                    ", yours"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "{}  {version}  ({}{own})",
                    listing.id,
                    trust_mark(listing.trusted)
                )?;
            }
        }
        CollectionCommand::History { id } => {
            let id = parse_collection_id(&id)?;
            for step in book.history(&id)? {
                match step {
                    oermesh::records::book::HistoryEntry::Version {
                        cid,
                        seq,
                        time,
                        entry_count,
                        ..
                    } => writeln!(out, "{seq:>6}  {time}  {entry_count} entries  {cid}")?,
                    oermesh::records::book::HistoryEntry::Missing { cid } => {
                        writeln!(out, "     ?  earlier versions not held here (next: {cid})")?
                    }
                    oermesh::records::book::HistoryEntry::Invalid { cid, reason } => {
                        writeln!(out, "     !  {cid} is not a valid version: {reason}")?
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trust(repo_path: &Path, command: TrustCommand) -> Result<ExitCode> {
    let mut repo = Repo::open(repo_path)?;
    let mut publishers = repo.config().trust.publishers.clone();
    let normalize = |text: &str| -> Result<String> {
        let text = text.trim();
        if text.starts_with("did:key:") {
            let key = keys::parse_did_key(text)?;
            Ok(keys::did_key(&key))
        } else {
            Ok(parse_collection_id(text)
                .map_err(|_| anyhow!("`{text}` is neither a did:key nor a collection id"))?
                .publisher_did())
        }
    };
    match command {
        TrustCommand::Add { publisher } => {
            let did = normalize(&publisher)?;
            if !publishers.contains(&did) {
                publishers.push(did.clone());
                repo.set_trusted(publishers)?;
            }
            println!("trusting {did}");
        }
        TrustCommand::Rm { publisher } => {
            let did = normalize(&publisher)?;
            let before = publishers.len();
            publishers.retain(|p| *p != did);
            if publishers.len() == before {
                bail!("{did} is not trusted");
            }
            repo.set_trusted(publishers)?;
            println!("no longer trusting {did}");
        }
        TrustCommand::List => {
            for did in publishers {
                println!("{did}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
