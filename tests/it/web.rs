//! The web page and search of a real daemon: collections, resources, search in
//! several scripts, the peers page and metrics, over loopback.

use std::collections::BTreeMap;
use std::fs;

use cid::Cid;
use ed25519_dalek::SigningKey;
use oermesh::daemon::Daemon;
use oermesh::node::Node;
use oermesh::records::{Author, BasedOn, Educational, Entry, RecordDraft};

use crate::fixture::{self, add, add_bytes, eventually, sign, Described};
use crate::http::{get, Response};

/// Arabic titles of the second collection: more than one page of them.
const ARABIC_RESOURCES: usize = 60;

struct Library {
    dir: tempfile::TempDir,
    daemon: Daemon,
    key: SigningKey,
    records: BTreeMap<&'static str, Cid>,
    maths: String,
    arabic: String,
}

impl Library {
    fn addr(&self) -> std::net::SocketAddr {
        self.daemon.http_addr()
    }

    async fn page(&self, target: &str) -> String {
        let response = get(self.addr(), target).await;
        assert_eq!(response.status, 200, "{target}: {}", response.text());
        response.text()
    }
}

/// Bytes that look like a file of each kind to a sniffer.
fn sample(kind: &str) -> Vec<u8> {
    let mut bytes = match kind {
        "pdf" => b"%PDF-1.4\n%fake but typed\n".to_vec(),
        "webm" => {
            let mut header = b"\x1A\x45\xDF\xA3\x9f\x42\x86\x81\x01\x42\x82\x84webm".to_vec();
            header.resize(300, 0);
            header
        }
        "png" => b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01".to_vec(),
        _ => b"plain notes\n".to_vec(),
    };
    bytes.extend_from_slice(kind.as_bytes());
    bytes
}

fn setup(
    repo: &Node,
    dir: &std::path::Path,
) -> (SigningKey, BTreeMap<&'static str, Cid>, String, String) {
    let key = fixture::own_key(repo, "school");
    let mut records = BTreeMap::new();
    let fractions = add_bytes(repo, dir, "fractions.pdf", &sample("pdf"));
    records.insert(
        "fractions",
        sign(
            repo,
            &key,
            fractions,
            Described {
                title: "Fractions for beginners",
                description: Some("Halves, thirds and quarters, with pictures."),
                licence: "CC-BY-SA-4.0",
                level: &["Primary school"],
                kind: &["lesson plan"],
                subjects: &["mathematics"],
                ..Described::default()
            },
        ),
    );
    let decimals = add_bytes(
        repo,
        dir,
        "decimals.txt",
        "الكسور العشرية للصف الخامس".as_bytes(),
    );
    records.insert(
        "arabic",
        sign(
            repo,
            &key,
            decimals,
            Described {
                title: "الكسور العشرية",
                language: "ar",
                description: Some("درس عن الكسور العشرية"),
                licence: "CC-BY-SA-3.0-IGO",
                level: &["Primary school"],
                ..Described::default()
            },
        ),
    );
    let chinese = add_bytes(repo, dir, "fenshu.png", &sample("png"));
    records.insert(
        "chinese",
        sign(
            repo,
            &key,
            chinese,
            Described {
                title: "学习分数的基础",
                language: "zh",
                ..Described::default()
            },
        ),
    );
    let film = add_bytes(repo, dir, "photosynthesis.webm", &sample("webm"));
    let photosynthesis = sign(
        repo,
        &fixture::stranger(),
        film,
        Described {
            title: "Photosynthesis",
            licence: "CC-BY-SA-4.0",
            level: &["Secondary school"],
            kind: &["video"],
            ..Described::default()
        },
    );
    records.insert("photosynthesis", photosynthesis);
    let site_dir = dir.join("usanisinuru");
    fs::create_dir_all(&site_dir).unwrap();
    fs::write(site_dir.join("index.html"), "<h1>Usanisinuru</h1>").unwrap();
    let site = add(repo, &site_dir)["usanisinuru"];
    let adaptation = repo
        .records()
        .sign_record(
            &key,
            RecordDraft {
                content: site,
                title: "Usanisinuru".into(),
                description: None,
                language: "sw".into(),
                authors: vec![Author {
                    name: "B. Mwangi".into(),
                    url: Some("https://example.org/mwangi".into()),
                }],
                licence: "CC-BY-SA-4.0".into(),
                licence_url: None,
                source: None,
                based_on: vec![BasedOn {
                    record: photosynthesis,
                    note: "translated to Swahili".into(),
                }],
                educational: Educational::default(),
                created: None,
            },
        )
        .unwrap()
        .cid;
    records.insert("usanisinuru", adaptation);
    let withdrawn_content = add_bytes(repo, dir, "old.txt", b"outdated");
    let withdrawn = sign(
        repo,
        &key,
        withdrawn_content,
        Described {
            title: "Outdated syllabus",
            ..Described::default()
        },
    );
    records.insert("withdrawn", withdrawn);

    let book = repo.records();
    book.create_collection("maths", "school", &key.verifying_key())
        .unwrap();
    book.add_entries(
        "maths",
        ["fractions", "arabic", "chinese", "withdrawn"]
            .iter()
            .map(|name| Entry::new(records[name]))
            .collect(),
    )
    .unwrap();
    let maths = book.publish("maths", &key).unwrap().id.to_string();
    book.retract(&key, &withdrawn, "replaced by the 2026 syllabus")
        .unwrap();

    book.create_collection("arabic-maths", "school", &key.verifying_key())
        .unwrap();
    let mut entries = Vec::new();
    for i in 0..ARABIC_RESOURCES {
        let content = add_bytes(
            repo,
            dir,
            &format!("ar-{i}.txt"),
            format!("درس {i}").as_bytes(),
        );
        let title = format!("الدرس رقم {i}");
        entries.push(Entry::new(sign(
            repo,
            &key,
            content,
            Described {
                title: &title,
                language: "ar",
                ..Described::default()
            },
        )));
    }
    book.add_entries("arabic-maths", entries).unwrap();
    let arabic = book.publish("arabic-maths", &key).unwrap().id.to_string();
    (key, records, maths, arabic)
}

async fn library() -> Library {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture::node(&dir.path().join("repo"));
    let files = dir.path().join("files");
    fs::create_dir_all(&files).unwrap();
    let (key, records, maths, arabic) = setup(&repo, &files);
    let daemon = fixture::start(repo).await;
    Library {
        dir,
        daemon,
        key,
        records,
        maths,
        arabic,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_list_resources_with_licence_language_size_and_attribution() {
    let library = library().await;
    let home = library.page("/").await;
    for collection in [&library.maths, &library.arabic] {
        assert!(
            home.contains(&format!("href=\"/collections/{collection}\"")),
            "{home}"
        );
    }
    assert!(home.contains("Version 1") && home.contains("60 resources"));

    let maths = library
        .page(&format!("/collections/{}", library.maths))
        .await;
    assert!(maths.contains("<h1>maths</h1>"));
    assert!(maths.contains("Fractions for beginners"));
    assert!(
        maths.contains("lang=\"ar\" dir=\"rtl\">الكسور العشرية</span>"),
        "{maths}"
    );
    assert!(maths.contains("lang=\"zh\" dir=\"ltr\">学习分数的基础</span>"));
    assert!(maths.contains("href=\"https://creativecommons.org/licenses/by-sa/4.0/\""));
    assert!(maths.contains("CC BY-SA 3.0 IGO"));
    assert!(maths.contains("Language: Arabic (العربية)"));
    assert!(maths.contains("Level: Primary school"));
    assert!(maths.contains("Type: lesson plan"));
    assert!(maths.contains("Size: "));
    assert!(maths.contains("“Fractions for beginners” by A. Teacher, licensed under CC BY-SA 4.0"));
    assert!(maths.contains("data-copy=\"attribution-0\""));
    assert!(maths.contains("1 withdrawn by their publisher, not shown"));
    assert!(!maths.contains("Outdated syllabus"));

    let first = library
        .page(&format!("/collections/{}", library.arabic))
        .await;
    assert_eq!(first.matches("class=\"card\"").count(), 50);
    assert!(first.contains("Page 1 of 2") && first.contains("rel=\"next\""));
    let second = library
        .page(&format!("/collections/{}?page=2", library.arabic))
        .await;
    assert_eq!(
        second.matches("class=\"card\"").count(),
        ARABIC_RESOURCES - 50
    );
    assert!(second.contains("rel=\"prev\""));

    let unknown = get(
        library.addr(),
        "/collections/z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK/none",
    )
    .await;
    assert_eq!(unknown.status, 404);
    let malformed = get(library.addr(), "/collections/not-a-key/none").await;
    assert_eq!(malformed.status, 404);
    library.daemon.shutdown().await.unwrap();
}

fn resource(library: &Library, name: &str) -> String {
    format!("/resources/{}", library.records[name])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_pages_preview_download_and_show_provenance_and_trust() {
    let library = library().await;
    let fractions = library.page(&resource(&library, "fractions")).await;
    assert!(
        fractions.contains("<object data=\"/ipfs/"),
        "a PDF is embedded"
    );
    assert!(fractions.contains("type=\"application/pdf\""));
    assert!(
        fractions.contains("download=true&amp;filename=Fractions-for-beginners.pdf"),
        "{fractions}"
    );
    assert!(fractions.contains("signature verified"));
    assert!(fractions.contains("trusted publisher"));
    assert!(fractions.contains("data-copy=\"attribution\""));

    let film = library.page(&resource(&library, "photosynthesis")).await;
    assert!(film.contains("<video controls preload=\"metadata\" src=\"/ipfs/"));
    assert!(film.contains(">not trusted</strong>"));
    assert!(film.contains("oermesh trust add did:key:"));

    let picture = library.page(&resource(&library, "chinese")).await;
    assert!(picture.contains("<img src=\"/ipfs/"));
    assert!(picture.contains("alt=\"Preview of 学习分数的基础\""));

    let site = library.page(&resource(&library, "usanisinuru")).await;
    assert!(site.contains("<iframe src=\"/ipfs/") && site.contains("sandbox=\"\""));
    assert!(site.contains("format=car"), "a folder downloads as a CAR");
    // The adaptation's provenance names the original, its signature checked, and the change.
    assert!(site.contains("Photosynthesis"));
    assert!(site.contains("Changes: <span dir=\"auto\">translated to Swahili</span>"));
    assert_eq!(site.matches("signature verified").count(), 2);
    assert!(site.contains("href=\"https://example.org/mwangi\""));
    assert!(site.contains("adapted from “Photosynthesis”"));

    let gone = get(library.addr(), &resource(&library, "withdrawn")).await;
    assert_eq!(gone.status, 410);
    assert!(gone.text().contains("replaced by the 2026 syllabus"));
    let unknown = get(
        library.addr(),
        "/resources/bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
    )
    .await;
    assert_eq!(unknown.status, 404);
    let not_a_cid = get(library.addr(), "/resources/nonsense").await;
    assert_eq!(not_a_cid.status, 404);
    library.daemon.shutdown().await.unwrap();
}

/// Record CIDs a search page lists, in order.
fn found(page: &str) -> Vec<String> {
    page.match_indices("<h3><a href=\"/resources/")
        .map(|(at, prefix)| {
            let rest = &page[at + prefix.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

async fn search(library: &Library, query: &str) -> Vec<String> {
    found(&library.page(&format!("/search?{query}")).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_words_with_a_typo_in_any_script_and_follows_the_records() {
    let library = library().await;
    let id = |name: &str| library.records[name].to_string();
    eventually("the index is built", || async {
        !search(&library, "q=fractions").await.is_empty()
    })
    .await;
    assert_eq!(search(&library, "q=fractions").await, vec![id("fractions")]);
    // One letter swapped, missing, or wrong.
    for typo in ["fractoins", "fractons", "fractiins", "FRACTIONS"] {
        assert_eq!(
            search(&library, &format!("q={typo}")).await,
            vec![id("fractions")],
            "{typo}"
        );
    }
    // Words from the description and subjects; several words narrow.
    assert_eq!(search(&library, "q=thirds").await, vec![id("fractions")]);
    assert_eq!(
        search(&library, "q=mathematics+halves").await,
        vec![id("fractions")]
    );
    assert!(search(&library, "q=mathematics+photosynthesis")
        .await
        .is_empty());
    // Arabic with and without short vowels, and Chinese without spaces.
    assert_eq!(
        search(&library, "q=%D8%A7%D9%84%D9%83%D8%B3%D9%88%D8%B1")
            .await
            .first(),
        Some(&id("arabic"))
    );
    let vowelled =
        url::form_urlencoded::byte_serialize("الْكُسُور الْعَشْرِيَّة".as_bytes()).collect::<String>();
    assert_eq!(
        search(&library, &format!("q={vowelled}")).await,
        vec![id("arabic")]
    );
    let fenshu = url::form_urlencoded::byte_serialize("分数".as_bytes()).collect::<String>();
    assert_eq!(
        search(&library, &format!("q={fenshu}")).await,
        vec![id("chinese")]
    );
    // Filters, alone and with words.
    let arabic_only = library.page("/search?language=ar").await;
    assert_eq!(found(&arabic_only).len(), 50, "the best 50 are shown");
    assert!(arabic_only.contains(&format!("{} resources found", ARABIC_RESOURCES + 1)));
    assert_eq!(
        search(&library, "q=photosynthesis&type=video").await,
        vec![id("photosynthesis")]
    );
    assert!(search(&library, "q=photosynthesis&level=primary+school")
        .await
        .is_empty());
    assert_eq!(
        search(&library, "licence=CC-BY-SA-3.0-IGO").await,
        vec![id("arabic")]
    );
    let page = library.page("/search?q=zzzzqqq").await;
    assert!(page.contains("No resources found"));
    let filters = library.page("/search").await;
    for option in [
        "value=\"ar\"",
        "value=\"primary school\"",
        "value=\"video\"",
        "value=\"CC-BY-4.0\"",
    ] {
        assert!(filters.contains(option), "{option}");
    }
    assert!(
        !search(&library, "q=outdated")
            .await
            .contains(&id("withdrawn")),
        "retracted records are not found"
    );

    // A record signed while the daemon runs is found, and gone once retracted.
    let content = add_bytes(
        library.daemon.node(),
        library.dir.path(),
        "new.txt",
        b"new lesson",
    );
    let fresh = sign(
        library.daemon.node(),
        &library.key,
        content,
        Described {
            title: "Volcanoes and earthquakes",
            ..Described::default()
        },
    );
    eventually("a new record is searchable", || async {
        search(&library, "q=volcanoes").await == vec![fresh.to_string()]
    })
    .await;
    library
        .daemon
        .node()
        .records()
        .retract(&library.key, &fresh, "mistake")
        .unwrap();
    eventually("a retracted record leaves the index", || async {
        search(&library, "q=volcanoes").await.is_empty()
    })
    .await;
    library.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_index_is_rebuilt_when_missing_or_behind_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = fixture::node(&root);
    let key = fixture::own_key(&repo, "school");
    let first = add_bytes(&repo, dir.path(), "a.txt", b"a");
    let first = sign(
        &repo,
        &key,
        first,
        Described {
            title: "Glaciers",
            ..Described::default()
        },
    );
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();
    let finds = |word: &'static str| async move {
        found(&get(addr, &format!("/search?q={word}")).await.text())
    };
    eventually("the first record is searchable", || async {
        finds("glaciers").await == vec![first.to_string()]
    })
    .await;
    daemon.shutdown().await.unwrap();

    // Records added while no daemon ran: the index is behind and is rebuilt.
    let repo = fixture::node(&root);
    let second = add_bytes(&repo, dir.path(), "b.txt", b"b");
    let second = sign(
        &repo,
        &key,
        second,
        Described {
            title: "Deserts",
            ..Described::default()
        },
    );
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();
    let finds = |word: &'static str| async move {
        found(&get(addr, &format!("/search?q={word}")).await.text())
    };
    eventually("a record added offline is searchable", || async {
        finds("deserts").await == vec![second.to_string()]
    })
    .await;
    assert_eq!(finds("glaciers").await, vec![first.to_string()]);
    daemon.shutdown().await.unwrap();

    // A deleted or damaged index is built again.
    fs::remove_dir_all(root.join("search")).unwrap();
    let repo = fixture::node(&root);
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();
    let finds = |word: &'static str| async move {
        found(&get(addr, &format!("/search?q={word}")).await.text())
    };
    eventually("the index is rebuilt", || async {
        finds("glaciers").await.len() == 1 && finds("deserts").await.len() == 1
    })
    .await;
    daemon.shutdown().await.unwrap();
    fs::write(root.join("search/meta.json"), b"{ not json").unwrap();
    let repo = fixture::node(&root);
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();
    eventually("a damaged index is rebuilt", || async {
        found(&get(addr, "/search?q=deserts").await.text()).len() == 1
    })
    .await;
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_page_status_assets_and_metrics() {
    let library = library().await;
    let peers = library.page("/peers").await;
    assert!(peers.contains("Collections held here"));
    assert!(peers.contains("3 of 3"), "maths: every resource held");
    assert!(peers.contains("60 of 60"));
    assert!(peers.contains("id=\"live\"") && peers.contains("id=\"live-toggle\""));

    let status: serde_json::Value =
        serde_json::from_str(&library.page("/api/status").await).unwrap();
    assert_eq!(status["collections"].as_array().unwrap().len(), 2);

    let style: Response = get(library.addr(), "/assets/style.css").await;
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(
        style.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let script = get(library.addr(), "/assets/app.js").await;
    assert!(script.text().contains("copyText"));
    assert_eq!(get(library.addr(), "/assets/other.js").await.status, 404);

    let record = get(
        library.addr(),
        &format!("/ipfs/{}?format=raw", library.records["fractions"]),
    )
    .await;
    assert_eq!(record.status, 200);
    eventually("the index counts every live record", || async {
        let status: serde_json::Value =
            serde_json::from_str(&get(library.addr(), "/api/status").await.text()).unwrap();
        status["search_documents"].as_u64() == Some(5 + ARABIC_RESOURCES as u64)
    })
    .await;
    let metrics = get(library.addr(), "/metrics").await;
    assert_eq!(
        metrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = metrics.text();
    for expected in [
        "oermesh_http_requests_total{route=\"page\",status=\"200\"}",
        "oermesh_http_requests_total{route=\"asset\",status=\"404\"} 1",
        "oermesh_http_request_duration_seconds_bucket{",
        "oermesh_bytes_served_total{protocol=\"http\"}",
        "oermesh_blocks_stored ",
        "oermesh_peers_connected 0",
        &format!("oermesh_search_documents {}", 5 + ARABIC_RESOURCES),
        "# EOF",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    library.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow; measures search speed in release builds (scripts/bench)"]
async fn search_performance_over_100000_records() {
    const RECORDS: usize = 100_000;
    const QUERIES: usize = 1_000;
    let words: Vec<&str> = "fractions algebra geometry photosynthesis volcanoes earthquakes \
        grammar poetry history geography chemistry physics biology music drawing reading \
        writing counting multiplication division decimals percentages triangles circles \
        energy forces magnets electricity plants animals water weather climate oceans rivers \
        mountains deserts forests farming health nutrition hygiene citizenship democracy \
        الكسور الهندسة الجبر القراءة الكتابة العلوم الطاقة المياه النباتات الحيوانات \
        分数 几何 代数 阅读 写作 科学 能量 植物 动物 天气"
        .split_whitespace()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let node = fixture::node(&dir.path().join("repo"));
    let key = fixture::own_key(&node, "school");
    let content = add_bytes(&node, dir.path(), "shared.txt", b"shared content");
    let mut state = 0x2545_f491_u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let started = std::time::Instant::now();
    let book = node.records();
    for i in 0..RECORDS {
        let title: Vec<&str> = (0..3 + next(3)).map(|_| words[next(words.len())]).collect();
        let title = format!("{} {i}", title.join(" "));
        let description: Vec<&str> = (0..12).map(|_| words[next(words.len())]).collect();
        let described = Described {
            title: &title,
            description: Some(&description.join(" ")),
            level: &[["primary school", "secondary school", "university"][next(3)]],
            ..Described::default()
        };
        book.sign_record(&key, fixture::draft(content, described))
            .unwrap();
    }
    drop(book);
    println!(
        "index: {RECORDS} records signed in {:.1?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    let daemon = fixture::start(node).await;
    let addr = daemon.http_addr();
    eventually("every record is indexed", || async {
        let status: serde_json::Value =
            serde_json::from_str(&get(addr, "/api/status").await.text()).unwrap();
        status["search_documents"].as_u64() == Some(RECORDS as u64)
    })
    .await;
    println!(
        "index: built from the record layer in {:.1?}",
        started.elapsed()
    );
    let mut latencies = Vec::with_capacity(QUERIES);
    for i in 0..QUERIES {
        let mut query: String = words[next(words.len())].to_string();
        if i % 3 == 0 {
            query.push(' ');
            query.push_str(words[next(words.len())]);
        }
        if i % 5 == 0 && query.is_ascii() && query.len() > 4 {
            // One letter swapped: the typo-tolerant path.
            let mut letters: Vec<char> = query.chars().collect();
            letters.swap(1, 2);
            query = letters.into_iter().collect();
        }
        let target = format!(
            "/search?q={}",
            url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
        );
        let asked = std::time::Instant::now();
        let response = get(addr, &target).await;
        latencies.push(asked.elapsed());
        assert_eq!(response.status, 200);
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "search: {QUERIES} queries over {RECORDS} records through HTTP (page included): p50 {:.1?}, p99 {:.1?}",
        at(0.50),
        at(0.99)
    );
    daemon.shutdown().await.unwrap();
}
