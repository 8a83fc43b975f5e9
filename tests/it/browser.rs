//! The web page in Debian's chromium, driven through chromedriver with a WebDriver
//! client (fantoccini), as a student would use it: open the page, search, open a
//! resource, seek in its video, copy its attribution, download it; each page checked
//! with axe-core and photographed at phone and desktop widths, in English and in an
//! Arabic-titled collection. Screenshots go to target/screenshots/ for review.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::fixture::{self, add_bytes, eventually, sign, Described};
use crate::http::get;
use crate::tools;

const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);
/// Length of the generated video, and where the test seeks to.
const VIDEO_SECONDS: f64 = 20.0;
const SEEK_TO: f64 = 12.0;

struct Chromedriver(Child);

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp; screenshots sit beside it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A video browsers can play and seek in: 20 s of test pattern, VP8 in WebM (with the
/// cues seeking needs), made by Debian's ffmpeg.
fn make_video(dir: &Path) -> Vec<u8> {
    let path = dir.join("volcanoes.webm");
    let output = Command::new(tools::ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg(format!(
            "testsrc2=duration={VIDEO_SECONDS}:size=320x240:rate=10"
        ))
        .args(["-c:v", "libvpx", "-b:v", "150k", "-g", "10", "-an", "-y"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "ffmpeg: {output:?}");
    std::fs::read(&path).unwrap()
}

/// Starts chromedriver and a headless chromium session that downloads into `downloads`.
async fn browser(profile: &Path, downloads: &Path) -> (Chromedriver, Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Chromedriver(
        Command::new(tools::chromedriver())
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut args: Vec<String> = tools::CHROMIUM_HEADLESS_FLAGS
        .iter()
        .map(|flag| flag.to_string())
        .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args.push(format!("--window-size={},{}", DESKTOP.0, DESKTOP.1));
    args.push("--lang=en-GB".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": tools::chromium(),
            "args": args,
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    // chromedriver takes a moment to listen; poll with a generous deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let client = loop {
        // chromedriver speaks plain HTTP on loopback: no TLS connector needed.
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => break client,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no chromedriver session: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    client
        .update_timeouts(TimeoutConfiguration::new(
            Some(Duration::from_secs(120)),
            Some(Duration::from_secs(120)),
            Some(Duration::from_secs(0)),
        ))
        .await
        .unwrap();
    (driver, client)
}

/// axe-core's violations on the current page that are serious or critical.
async fn serious_violations(client: &Client, axe: &str) -> Vec<Value> {
    client.execute(axe, vec![]).await.unwrap();
    let result = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document).then(
               (r) => done(r.violations.map((v) => ({
                 id: v.id, impact: v.impact, help: v.help,
                 nodes: v.nodes.map((n) => n.target.join(' ')) }))),
               (e) => done([{ id: 'axe-error', impact: 'critical', help: String(e) }]));",
            vec![],
        )
        .await
        .unwrap();
    result
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .cloned()
        .collect()
}

/// Checks the page at both widths: no serious accessibility violation, nothing wider
/// than a phone screen (WCAG reflow), and a screenshot of each.
async fn check_page(client: &Client, axe: &str, name: &str) {
    for (width_name, (width, height)) in [("desktop", DESKTOP), ("phone", PHONE)] {
        client.set_window_size(width, height).await.unwrap();
        let violations = serious_violations(client, axe).await;
        assert!(
            violations.is_empty(),
            "{name} at {width_name} width: {}",
            serde_json::to_string_pretty(&violations).unwrap()
        );
        let png = client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(
            screenshot_dir().join(format!("{name}-{width_name}.png")),
            png,
        )
        .unwrap();
        let overflow = client
            .execute(
                "const wide = [...document.querySelectorAll('body *')]
                   .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
                   .map((e) => e.tagName + '.' + e.className);
                 return [document.documentElement.scrollWidth - window.innerWidth, wide.slice(0, 5)];",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow[0].as_i64().unwrap_or(0) <= 0,
            "{name} scrolls sideways at {width_name} width: {overflow}"
        );
    }
    client.set_window_size(DESKTOP.0, DESKTOP.1).await.unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|err| panic!("{css}: {err}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_finds_watches_copies_and_downloads_a_resource_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let node = fixture::node(&dir.path().join("repo"));
    let key = fixture::own_key(&node, "school");
    let video = make_video(&files);
    let film = add_bytes(&node, &files, "volcanoes.webm", &video);
    let volcanoes = sign(
        &node,
        &key,
        film,
        Described {
            title: "Volcanoes",
            description: Some("How volcanoes form and erupt, in twenty seconds of test pattern."),
            licence: "CC-BY-SA-3.0-IGO",
            level: &["Secondary school"],
            kind: &["video"],
            subjects: &["geography"],
            ..Described::default()
        },
    );
    let notes = add_bytes(&node, &files, "notes.txt", b"Lesson notes");
    let notes = sign(
        &node,
        &key,
        notes,
        Described {
            title: "Earthquake notes",
            ..Described::default()
        },
    );
    let book = node.records();
    book.create_collection("earth-science", "school", &key.verifying_key())
        .unwrap();
    book.add_entries(
        "earth-science",
        vec![
            oermesh::records::Entry::new(volcanoes),
            oermesh::records::Entry::new(notes),
        ],
    )
    .unwrap();
    let science = book.publish("earth-science", &key).unwrap().id.to_string();
    book.create_collection("riyadiyat", "school", &key.verifying_key())
        .unwrap();
    let mut arabic = Vec::new();
    for (i, title) in ["الكسور العشرية", "الهندسة المستوية", "جدول الضرب"]
        .iter()
        .enumerate()
    {
        let content = add_bytes(&node, &files, &format!("ar-{i}.txt"), title.as_bytes());
        arabic.push(oermesh::records::Entry::new(sign(
            &node,
            &key,
            content,
            Described {
                title,
                language: "ar",
                description: Some("درس في الرياضيات للصف الخامس"),
                level: &["Primary school"],
                ..Described::default()
            },
        )));
    }
    book.add_entries("riyadiyat", arabic).unwrap();
    let riyadiyat = book.publish("riyadiyat", &key).unwrap().id.to_string();
    drop(book);
    let daemon = fixture::start(node).await;
    let base = daemon.page_url();
    let addr = daemon.http_addr();
    eventually("the search index is built", || async {
        get(addr, "/search?q=volcanoes")
            .await
            .text()
            .contains("1 resource found")
    })
    .await;

    let axe =
        std::fs::read_to_string(tools::node_package_dir().join("node_modules/axe-core/axe.min.js"))
            .unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let (_driver, client) = browser(&dir.path().join("profile"), &downloads).await;

    // The front page, then a search with a typing mistake.
    client.goto(&base).await.unwrap();
    assert_eq!(
        text_of(&client, "h1").await,
        "Learning materials on this node"
    );
    assert_eq!(client.title().await.unwrap(), "Collections · oermesh");
    check_page(&client, &axe, "home").await;
    let search = client.find(Locator::Css("#home-q")).await.unwrap();
    search.send_keys("volcanos").await.unwrap();
    client
        .find(Locator::Css("form.searchbox button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        text_of(&client, "#results-h").await,
        "1 resource found for “volcanos”"
    );
    check_page(&client, &axe, "search").await;

    // The resource: its page, its video, seeking in it.
    client
        .find(Locator::Css("ol.cards h3 a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await, "Volcanoes");
    let seeked = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const video = document.querySelector('video');
             const seek = () => {
               video.addEventListener('seeked', () => done({
                 time: video.currentTime, duration: video.duration, state: video.readyState }),
                 { once: true });
               video.currentTime = arguments[0];
             };
             video.addEventListener('error', () => done({ error: video.error && video.error.code }));
             if (video.readyState >= 1) { seek(); } else {
               video.addEventListener('loadedmetadata', seek, { once: true });
               video.load();
             }",
            vec![json!(SEEK_TO)],
        )
        .await
        .unwrap();
    assert!(
        seeked["error"].is_null(),
        "the video did not play: {seeked}"
    );
    assert!(
        (seeked["time"].as_f64().unwrap() - SEEK_TO).abs() < 1.0,
        "seeked to {seeked}"
    );
    assert!((seeked["duration"].as_f64().unwrap() - VIDEO_SECONDS).abs() < 1.0);
    let metrics = get(addr, "/metrics").await.text();
    assert!(
        metrics.contains("oermesh_http_requests_total{route=\"gateway\",status=\"206\"}"),
        "the browser fetched the video by ranges"
    );

    // The attribution's copy button appears with the script and says what it did.
    let copy = client
        .find(Locator::Css("button[data-copy=\"attribution\"]"))
        .await
        .unwrap();
    assert!(
        copy.is_displayed().await.unwrap(),
        "the script shows the copy button"
    );
    copy.click().await.unwrap();
    eventually("the copy is announced", || async {
        let announced = client
            .find(Locator::Css("#announce"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        !announced.is_empty()
    })
    .await;
    check_page(&client, &axe, "resource").await;

    // The download arrives whole, under a name taken from the title.
    client
        .find(Locator::Css("a.button[download]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let downloaded = downloads.join("Volcanoes.webm");
    eventually("the download is complete", || async {
        std::fs::read(&downloaded).is_ok_and(|bytes| bytes == video)
    })
    .await;

    // Both collections, the English one and the Arabic one, and the peers page.
    client
        .goto(&format!("{base}collections/{science}"))
        .await
        .unwrap();
    assert_eq!(text_of(&client, "h1").await, "earth-science");
    check_page(&client, &axe, "collection-en").await;
    client
        .goto(&format!("{base}collections/{riyadiyat}"))
        .await
        .unwrap();
    let direction = client
        .execute(
            "const title = document.querySelector('h3 a span[lang=\"ar\"]');
             return [title.textContent, getComputedStyle(title).direction];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(direction[1], "rtl", "{direction}");
    check_page(&client, &axe, "collection-ar").await;
    client.goto(&format!("{base}peers")).await.unwrap();
    assert_eq!(text_of(&client, "h1").await, "Peers and replication");
    assert!(client
        .find(Locator::Css("#live-toggle"))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap());
    check_page(&client, &axe, "peers").await;

    client.close().await.unwrap();
    daemon.shutdown().await.unwrap();
}
