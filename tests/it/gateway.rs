//! The HTTP gateway of a real daemon: files, folders, ranges, caching headers, raw
//! blocks, CARs, and every bad request form, over loopback.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use cid::Cid;
use oermesh::block::{BlockGet, BlockPut, MemoryBlocks};
use oermesh::car::CarReader;
use oermesh::node::Node;
use oermesh::unixfs::reader;

use crate::fixture::{self, add, add_bytes, sign, Described};
use crate::gen::generated_bytes;
use crate::http::{get, request, send_raw, Response};

const NOTES: &str = "ملاحظات الدرس الأول\nLesson one notes\n";
const INDEX: &str = "<!doctype html><title>Site</title><h1>Welcome</h1>";
/// Four leaves of the default 1 MiB chunker, the last one short.
const BIG_LEN: usize = 3 * 1024 * 1024 + 123_457;

/// A folder with text, a big binary, a site with an index.html, names that need
/// escaping, and a folder large enough to be HAMT-sharded.
fn content_tree(base: &Path) -> std::path::PathBuf {
    let root = base.join("course");
    fs::create_dir_all(root.join("site/css")).unwrap();
    fs::create_dir_all(root.join("shelf")).unwrap();
    fs::write(root.join("notes.txt"), NOTES).unwrap();
    fs::write(root.join("big.bin"), generated_bytes(BIG_LEN, 7)).unwrap();
    fs::write(root.join("noext"), "<p>markup without a name").unwrap();
    fs::write(root.join("site/index.html"), INDEX).unwrap();
    fs::write(root.join("site/css/main.css"), "h1{color:#123}").unwrap();
    fs::write(root.join("space name.txt"), "spaced").unwrap();
    fs::write(root.join("درس.txt"), "عربي").unwrap();
    for i in 0..4000 {
        fs::write(
            root.join(format!("shelf/book-{i:05}-with-a-longer-name.txt")),
            format!("book {i}"),
        )
        .unwrap();
    }
    root
}

struct Course {
    _dir: tempfile::TempDir,
    daemon: oermesh::daemon::Daemon,
    cids: BTreeMap<String, Cid>,
    /// The root folder's block, as stored.
    root_block: Vec<u8>,
}

impl Course {
    fn cid(&self, path: &str) -> Cid {
        self.cids[path]
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.daemon.http_addr()
    }
}

async fn course() -> Course {
    course_with(|_, _| {}).await
}

async fn course_with(prepare: impl FnOnce(&Node, &BTreeMap<String, Cid>)) -> Course {
    let dir = tempfile::tempdir().unwrap();
    let tree = content_tree(dir.path());
    let repo = fixture::node(&dir.path().join("repo"));
    let cids = add(&repo, &tree);
    prepare(&repo, &cids);
    let root_block = repo.store().get_block(&cids["course"]).unwrap();
    let daemon = fixture::start(repo).await;
    Course {
        _dir: dir,
        daemon,
        cids,
        root_block,
    }
}

fn blocks_of_car(body: &[u8]) -> (Vec<Cid>, Vec<Cid>, MemoryBlocks) {
    let mut car = CarReader::new(body).unwrap();
    let roots = car.roots().to_vec();
    let store = MemoryBlocks::new();
    let mut order = Vec::new();
    for block in &mut car {
        let (cid, data) = block.unwrap();
        store.put_block(&cid, &data).unwrap();
        order.push(cid);
    }
    (roots, order, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_come_with_their_type_length_validators_and_immutable_caching() {
    let course = course().await;
    let root = course.cid("course");
    let notes = course.cid("course/notes.txt");
    let path = format!("/ipfs/{root}/notes.txt");
    let response = get(course.addr(), &path).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), NOTES);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        response.header("content-length"),
        Some(NOTES.len().to_string().as_str())
    );
    let etag = format!("\"{notes}\"");
    assert_eq!(response.header("etag"), Some(etag.as_str()));
    assert_eq!(
        response.header("cache-control"),
        Some("public, max-age=29030400, immutable")
    );
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(response.header("accept-ranges"), Some("bytes"));
    assert_eq!(response.header("x-ipfs-path"), Some(path.as_str()));
    assert_eq!(
        response.header("x-ipfs-roots"),
        Some(format!("{root},{notes}").as_str())
    );
    // No record describes this content: it is sandboxed.
    assert!(response
        .header("content-security-policy")
        .unwrap()
        .starts_with("sandbox"));

    let head = request(course.addr(), "HEAD", &path, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        response.header("content-length")
    );
    assert_eq!(head.header("etag"), response.header("etag"));

    for validator in [
        etag.clone(),
        format!("W/{etag}"),
        "\"other\", ".to_string() + &etag,
        "*".into(),
    ] {
        let cached = request(
            course.addr(),
            "GET",
            &path,
            &[("If-None-Match", &validator)],
        )
        .await;
        assert_eq!(cached.status, 304, "{validator}");
        assert!(cached.body.is_empty());
        assert_eq!(cached.header("etag"), Some(etag.as_str()));
    }
    let changed = request(
        course.addr(),
        "GET",
        &path,
        &[("If-None-Match", "\"other\"")],
    )
    .await;
    assert_eq!(changed.status, 200);

    // Types from the name, then from the bytes.
    let html = get(course.addr(), &format!("/ipfs/{root}/site/index.html")).await;
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let css = get(course.addr(), &format!("/ipfs/{root}/site/css/main.css")).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    let sniffed = get(course.addr(), &format!("/ipfs/{root}/noext")).await;
    assert_eq!(
        sniffed.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(sniffed
        .header("content-security-policy")
        .unwrap()
        .starts_with("sandbox"));
    let big = get(
        course.addr(),
        &format!("/ipfs/{}", course.cid("course/big.bin")),
    )
    .await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body, generated_bytes(BIG_LEN, 7));
    // Names that need escaping, in the URL as browsers send them.
    let spaced = get(course.addr(), &format!("/ipfs/{root}/space%20name.txt")).await;
    assert_eq!(spaced.text(), "spaced");
    let arabic = get(
        course.addr(),
        &format!("/ipfs/{root}/%D8%AF%D8%B1%D8%B3.txt"),
    )
    .await;
    assert_eq!(arabic.text(), "عربي");
    course.daemon.shutdown().await.unwrap();
}

fn content_range(response: &Response) -> &str {
    response.header("content-range").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_seek_within_files_merge_when_they_overlap_and_are_capped() {
    let course = course().await;
    let path = format!("/ipfs/{}", course.cid("course/big.bin"));
    let data = generated_bytes(BIG_LEN, 7);
    let size = data.len();
    let addr = course.addr();
    let range = |spec: &str| {
        let path = path.clone();
        let spec = spec.to_string();
        async move { request(addr, "GET", &path, &[("Range", &spec)]).await }
    };

    // Across a leaf boundary, as a video player seeking does.
    let start = 1024 * 1024 - 10;
    let response = range(&format!("bytes={start}-{}", start + 99)).await;
    assert_eq!(response.status, 206);
    assert_eq!(
        content_range(&response),
        format!("bytes {start}-{}/{size}", start + 99)
    );
    assert_eq!(response.body, &data[start..start + 100]);

    let tail = range("bytes=-500").await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, &data[size - 500..]);
    let open = range(&format!("bytes={}-", size - 3)).await;
    assert_eq!(open.body, &data[size - 3..]);

    // Overlapping and adjacent ranges become one.
    let merged = range("bytes=0-9,5-19,20-29").await;
    assert_eq!(merged.status, 206);
    assert_eq!(content_range(&merged), format!("bytes 0-29/{size}"));
    assert_eq!(merged.body, &data[..30]);

    // Separate ranges come as multipart/byteranges.
    let multi = range("bytes=0-4,2000000-2000004").await;
    assert_eq!(multi.status, 206);
    let content_type = multi.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    let text = String::from_utf8_lossy(&multi.body);
    assert_eq!(text.matches(&format!("--{boundary}")).count(), 3);
    assert!(text.contains(&format!("Content-Range: bytes 0-4/{size}")));
    assert!(text.contains(&format!("Content-Range: bytes 2000000-2000004/{size}")));
    let first_part = &multi.body[multi
        .body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4..][..5];
    assert_eq!(first_part, &data[..5]);

    // More ranges than allowed (16 by default), and ranges outside the file: 416.
    let many: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
        .collect();
    let refused = range(&format!("bytes={}", many.join(","))).await;
    assert_eq!(refused.status, 416);
    assert!(refused.text().contains("at most 16 ranges"));
    let outside = range(&format!("bytes={size}-")).await;
    assert_eq!(outside.status, 416);
    assert_eq!(content_range(&outside), format!("bytes */{size}"));

    // A stale If-Range gets the whole file; a malformed Range is ignored.
    let stale = request(
        course.addr(),
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Range", "\"something-else\"")],
    )
    .await;
    assert_eq!((stale.status, stale.body.len()), (200, size));
    let fresh = request(
        course.addr(),
        "GET",
        &path,
        &[
            ("Range", "bytes=0-9"),
            ("If-Range", &format!("\"{}\"", course.cid("course/big.bin"))),
        ],
    )
    .await;
    assert_eq!(fresh.status, 206);
    let ignored = range("bytes=9-1").await;
    assert_eq!((ignored.status, ignored.body.len()), (200, size));
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_redirect_to_a_slash_then_show_their_index_html_or_a_listing() {
    let course = course().await;
    let root = course.cid("course");
    let redirect = get(course.addr(), &format!("/ipfs/{root}/site?x=1")).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.header("location"),
        Some(format!("/ipfs/{root}/site/?x=1").as_str())
    );
    let site = get(course.addr(), &format!("/ipfs/{root}/site/")).await;
    assert_eq!(site.status, 200);
    assert_eq!(site.text(), INDEX);
    assert_eq!(
        site.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    let listing = get(course.addr(), &format!("/ipfs/{root}/")).await;
    assert_eq!(listing.status, 200);
    let page = listing.text();
    assert!(page.contains("notes.txt") && page.contains("big.bin"));
    assert!(
        page.contains("href=\"./space%20name.txt\""),
        "names are escaped in links"
    );
    assert!(page.contains("href=\"./%D8%AF%D8%B1%D8%B3.txt\""));
    assert!(page.contains("href=\"./site/\""));
    assert!(listing.header("etag").unwrap().starts_with("\"DirIndex-"));
    assert!(listing
        .header("content-security-policy")
        .unwrap()
        .starts_with("default-src 'none'"));
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_folders_resolve_by_reading_only_the_shards_on_the_path() {
    let course = course().await;
    let shelf = course.cid("course/shelf");
    let name = "book-03210-with-a-longer-name.txt";
    let book = get(course.addr(), &format!("/ipfs/{shelf}/{name}")).await;
    assert_eq!(book.status, 200);
    assert_eq!(book.text(), "book 3210");
    let missing = get(course.addr(), &format!("/ipfs/{shelf}/book-99999.txt")).await;
    assert_eq!(missing.status, 404);

    // The blocks a resolution needs, as the trustless gateway reports them, against
    // every shard of the folder.
    let path = get(
        course.addr(),
        &format!("/ipfs/{shelf}/{name}?format=car&dag-scope=block"),
    )
    .await;
    let (_, path_blocks, _) = blocks_of_car(&path.body);
    let shards = get(
        course.addr(),
        &format!("/ipfs/{shelf}?format=car&dag-scope=entity"),
    )
    .await;
    let (_, shard_blocks, _) = blocks_of_car(&shards.body);
    assert!(
        shard_blocks.len() > 100,
        "the folder is sharded into many blocks: {}",
        shard_blocks.len()
    );
    assert!(
        path_blocks.len() <= 4,
        "resolving one name read {} blocks",
        path_blocks.len()
    );
    assert_eq!(
        path_blocks.last(),
        Some(&course.cid(&format!("course/shelf/{name}")))
    );
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_and_filename_set_the_content_disposition() {
    let course = course().await;
    let notes = course.cid("course/notes.txt");
    let download = get(
        course.addr(),
        &format!("/ipfs/{notes}?download=true&filename=%D8%AF%D8%B1%D8%B3.txt"),
    )
    .await;
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"___.txt\"; filename*=UTF-8''%D8%AF%D8%B1%D8%B3%2Etxt")
    );
    let inline = get(course.addr(), &format!("/ipfs/{notes}?filename=notes.pdf")).await;
    assert_eq!(
        inline.header("content-disposition"),
        Some("inline; filename=\"notes.pdf\"")
    );
    assert_eq!(inline.header("content-type"), Some("application/pdf"));
    let plain = get(course.addr(), &format!("/ipfs/{notes}?download=true")).await;
    assert_eq!(
        plain.header("content-disposition"),
        Some(format!("attachment; filename=\"{notes}\"").as_str())
    );
    for bad in ["a%2Fb", "..%5Cx", "a%00b", ""] {
        let refused = get(course.addr(), &format!("/ipfs/{notes}?filename={bad}")).await;
        assert_eq!(refused.status, 400, "filename={bad}");
    }
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_blocks_are_served_as_stored_by_format_or_accept() {
    let course = course().await;
    let root = course.cid("course");
    let stored = course.root_block.clone();
    let by_format = get(course.addr(), &format!("/ipfs/{root}?format=raw")).await;
    assert_eq!(by_format.status, 200);
    assert_eq!(by_format.body, stored);
    assert_eq!(
        by_format.header("content-type"),
        Some("application/vnd.ipld.raw")
    );
    assert_eq!(
        by_format.header("content-disposition"),
        Some(format!("attachment; filename=\"{root}.bin\"").as_str())
    );
    assert_eq!(
        by_format.header("etag"),
        Some(format!("\"{root}.raw\"").as_str())
    );
    assert_eq!(by_format.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(by_format.header("content-location"), None);

    let by_accept = request(
        course.addr(),
        "GET",
        &format!("/ipfs/{root}"),
        &[("Accept", "application/vnd.ipld.raw")],
    )
    .await;
    assert_eq!(by_accept.body, stored);
    assert_eq!(
        by_accept.header("content-location"),
        Some(format!("/ipfs/{root}?format=raw").as_str())
    );
    let with_path = get(course.addr(), &format!("/ipfs/{root}/notes.txt?format=raw")).await;
    assert_eq!(with_path.status, 400);
    // The trustless gateway's probe: the empty identity CID.
    let probe = get(course.addr(), "/ipfs/bafkqaaa?format=raw").await;
    assert_eq!((probe.status, probe.body.len()), (200, 0));
    let unknown = get(
        course.addr(),
        "/ipfs/bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e?format=raw",
    )
    .await;
    assert_eq!(unknown.status, 404);
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cars_carry_the_path_then_the_scope_each_block_once() {
    let course = course().await;
    let root = course.cid("course");
    let big = course.cid("course/big.bin");
    let data = generated_bytes(BIG_LEN, 7);

    // The whole DAG: every file reads back from the CAR alone.
    let all = get(course.addr(), &format!("/ipfs/{root}?format=car")).await;
    assert_eq!(all.status, 200);
    assert_eq!(
        all.header("content-type"),
        Some("application/vnd.ipld.car; version=1; order=dfs; dups=n")
    );
    assert_eq!(
        all.header("content-disposition"),
        Some(format!("attachment; filename=\"{root}.car\"").as_str())
    );
    let (roots, order, blocks) = blocks_of_car(&all.body);
    assert_eq!(roots, vec![root]);
    assert_eq!(order[0], root, "depth first: the root comes first");
    assert_eq!(
        order.len(),
        order.iter().collect::<HashSet<_>>().len(),
        "dups=n"
    );
    let mut read = Vec::new();
    reader::read_file(&blocks, &big, &mut read).unwrap();
    assert_eq!(read, data);

    // A path and a byte range: the blocks of the path, then only the leaves that hold
    // the bytes asked for.
    let from = 1024 * 1024 + 5;
    let ranged = get(
        course.addr(),
        &format!(
            "/ipfs/{root}/big.bin?format=car&dag-scope=entity&entity-bytes={from}:{}",
            from + 10
        ),
    )
    .await;
    let (roots, order, blocks) = blocks_of_car(&ranged.body);
    assert_eq!(roots, vec![root]);
    assert_eq!(order[0], root);
    assert_eq!(order[1], big);
    assert_eq!(order.len(), 3, "root, file node, one leaf: {order:?}");
    let mut part = Vec::new();
    reader::read_range(&blocks, &big, from as u64, 11, &mut part).unwrap();
    assert_eq!(part, &data[from..from + 11]);
    assert!(reader::read_range(&blocks, &big, 0, 10, &mut Vec::new()).is_err());
    let tail = get(
        course.addr(),
        &format!("/ipfs/{big}?format=car&entity-bytes=-10:*"),
    )
    .await;
    assert_eq!(
        blocks_of_car(&tail.body).1.len(),
        2,
        "file node and the last leaf"
    );
    let outside = get(
        course.addr(),
        &format!("/ipfs/{big}?format=car&entity-bytes={BIG_LEN}:*"),
    )
    .await;
    assert_eq!(outside.status, 400);

    // dag-scope=block: just the terminal block after the path.
    let block = get(
        course.addr(),
        &format!("/ipfs/{root}/big.bin?format=car&dag-scope=block"),
    )
    .await;
    assert_eq!(blocks_of_car(&block.body).1, vec![root, big]);
    // Etags differ by scope; If-None-Match works on them too.
    assert_ne!(block.header("etag"), ranged.header("etag"));
    let etag = block.header("etag").unwrap().to_string();
    let again = request(
        course.addr(),
        "GET",
        &format!("/ipfs/{root}/big.bin?format=car&dag-scope=block"),
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);

    // Content negotiation by Accept.
    let accepted = request(
        course.addr(),
        "GET",
        &format!("/ipfs/{big}"),
        &[(
            "Accept",
            "application/vnd.ipld.car; version=1; order=dfs; dups=n",
        )],
    )
    .await;
    assert_eq!(accepted.status, 200);
    assert_eq!(
        accepted.header("content-location"),
        Some(format!("/ipfs/{big}?format=car").as_str())
    );
    for (accept, status) in [
        ("application/vnd.ipld.car; version=2", 406),
        ("application/vnd.ipld.car; dups=y", 406),
    ] {
        let refused = request(
            course.addr(),
            "GET",
            &format!("/ipfs/{big}"),
            &[("Accept", accept)],
        )
        .await;
        assert_eq!(refused.status, status, "{accept}");
    }
    for query in [
        "car-dups=y",
        "car-version=2",
        "dag-scope=most",
        "entity-bytes=1-2",
        "format=tar",
    ] {
        let refused = get(course.addr(), &format!("/ipfs/{big}?format=car&{query}")).await;
        assert_eq!(refused.status, 400, "{query}");
    }
    let head = request(
        course.addr(),
        "HEAD",
        &format!("/ipfs/{root}?format=car"),
        &[],
    )
    .await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    let probe = get(course.addr(), "/ipfs/bafkqaaa?format=car").await;
    assert_eq!(probe.status, 200);
    assert_eq!(blocks_of_car(&probe.body).0[0].to_string(), "bafkqaaa");
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_form_is_refused_with_400_and_missing_content_is_404() {
    let course = course().await;
    let root = course.cid("course");
    let long = format!("/ipfs/{root}/{}", "a".repeat(5000));
    let bad_targets = [
        format!("/ipfs/{root}/../{root}"),
        format!("/ipfs/{root}/site/../notes.txt"),
        format!("/ipfs/{root}/%2e%2e/notes.txt"),
        format!("/ipfs/{root}/.%2E/notes.txt"),
        format!("/ipfs/{root}/./notes.txt"),
        format!("/ipfs/{root}/site%2Findex.html"),
        format!("/ipfs/{root}/site%2findex.html"),
        format!("/ipfs/{root}/site\\index.html"),
        format!("/ipfs/{root}/site%5Cindex.html"),
        format!("/ipfs/{root}/notes.txt%00.html"),
        format!("/ipfs/{root}//notes.txt"),
        format!("/ipfs/{root}/%zz"),
        "/ipfs/not-a-cid".to_string(),
        "/ipfs/".to_string(),
        "/ipfs".to_string(),
        "/ipfs/QmNotBase58!".to_string(),
        "/%2e%2e/etc/passwd".to_string(),
        "/search/..".to_string(),
        long,
    ];
    for target in &bad_targets {
        let response = get(course.addr(), target).await;
        assert_eq!(response.status, 400, "{target}: {}", response.text());
        assert!(response.text().starts_with("400 Bad Request: "), "{target}");
    }
    let missing = [
        // Valid, but not on this node.
        "/ipfs/bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e".to_string(),
        format!("/ipfs/{root}/no-such-file"),
        format!("/ipfs/{root}/notes.txt/below-a-file"),
    ];
    for target in &missing {
        let response = get(course.addr(), target).await;
        assert_eq!(response.status, 404, "{target}: {}", response.text());
    }

    // A request head larger than allowed (16 KiB by default).
    let huge = request(
        course.addr(),
        "GET",
        &format!("/ipfs/{root}/notes.txt"),
        &[("X-Padding", &"p".repeat(20_000))],
    )
    .await;
    assert_eq!(huge.status, 431);

    // The browser-facing address takes no writes.
    let before = get(course.addr(), "/api/status").await.text();
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for target in ["/", "/api/status", &format!("/ipfs/{root}")] {
            let raw = format!(
                "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
            );
            let response =
                crate::http::parse(&send_raw(course.addr(), raw.into_bytes()).await, false);
            assert_eq!(response.status, 405, "{method} {target}");
            assert_eq!(response.header("allow"), Some("GET, HEAD"));
        }
    }
    let after = get(course.addr(), "/api/status").await.text();
    let figures = |text: &str| {
        let json: serde_json::Value = serde_json::from_str(text).unwrap();
        (
            json["blocks"].clone(),
            json["bytes"].clone(),
            json["pins_total"].clone(),
        )
    };
    assert_eq!(figures(&before), figures(&after));
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_decides_the_sandbox_and_retracted_content_is_gone_with_its_reason() {
    let mut records = BTreeMap::new();
    let course = course_with(|repo, cids| {
        let own = fixture::own_key(repo, "school");
        let trusted = sign(repo, &own, cids["course/site"], Described::default());
        let untrusted = sign(
            repo,
            &fixture::stranger(),
            cids["course/notes.txt"],
            Described::default(),
        );
        let withdrawn = sign(repo, &own, cids["course/big.bin"], Described::default());
        repo.records()
            .retract(&own, &withdrawn, "the rights holder asked us to remove it")
            .unwrap();
        records.insert("trusted", trusted);
        records.insert("untrusted", untrusted);
    })
    .await;
    let site = get(
        course.addr(),
        &format!("/ipfs/{}/", course.cid("course/site")),
    )
    .await;
    assert_eq!(site.status, 200);
    assert_eq!(
        site.header("content-security-policy"),
        Some("frame-ancestors 'self'")
    );
    let notes = get(
        course.addr(),
        &format!("/ipfs/{}", course.cid("course/notes.txt")),
    )
    .await;
    assert_eq!(
        notes.header("content-security-policy"),
        Some("sandbox; frame-ancestors 'self'")
    );
    // The same trusted site, reached through a folder no record covers, is sandboxed.
    let through = get(
        course.addr(),
        &format!("/ipfs/{}/site/", course.cid("course")),
    )
    .await;
    assert!(through
        .header("content-security-policy")
        .unwrap()
        .starts_with("sandbox"));

    let big = course.cid("course/big.bin");
    for target in [
        format!("/ipfs/{big}"),
        format!("/ipfs/{big}?format=raw"),
        format!("/ipfs/{big}?format=car"),
    ] {
        let gone = get(course.addr(), &target).await;
        assert_eq!(gone.status, 410, "{target}");
        assert!(
            gone.text()
                .contains("the rights holder asked us to remove it"),
            "{}",
            gone.text()
        );
    }
    course.daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_a_bounded_buffer_and_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = fixture::node(&root);
    drop(repo);
    fixture::set_gateway_config(&root, &[("send_timeout_secs", "2")]);
    let repo = fixture::node(&root);
    let size = 96 * 1024 * 1024;
    let file = add_bytes(&repo, dir.path(), "film.bin", &generated_bytes(size, 3));
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();

    // Ask for the file, then read nothing.
    let stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write;
    (&stream)
        .write_all(format!("GET /ipfs/{file} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let served = || async {
        let metrics = get(addr, "/metrics").await.text();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("oermesh_bytes_served_total{protocol=\"http\"}"))
            .map(str::to_string);
        let connections = metrics
            .lines()
            .find(|l| l.starts_with("oermesh_http_connections "))
            .and_then(|l| l.split(' ').nth(1)?.parse::<i64>().ok())
            .unwrap_or(-1);
        let bytes = line
            .and_then(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        (bytes, connections)
    };
    fixture::eventually("the file starts to be sent", || async {
        served().await.0 > 0
    })
    .await;
    // The stalled connection is closed after the send timeout (the /metrics request is
    // the one connection left).
    fixture::eventually("the stalled client is cut off", || async {
        served().await.1 == 1
    })
    .await;
    let (bytes, _) = served().await;
    assert!(
        bytes < 40 * 1024 * 1024,
        "{bytes} bytes were produced for a client that read none of a {size}-byte file"
    );
    drop(stream);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_its_request_head_is_cut_off_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    drop(fixture::node(&root));
    fixture::set_gateway_config(&root, &[("header_timeout_secs", "2")]);
    let repo = fixture::node(&root);
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();
    let lasted = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let started = std::time::Instant::now();
        // Never a blank line: the head is never complete.
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: abc".iter().cycle() {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            let mut buffer = [0u8; 64];
            match stream.read(&mut buffer) {
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // Closed, reset, or answered with an error: cut off either way.
                _ => break,
            }
            if started.elapsed() > std::time::Duration::from_secs(120) {
                break;
            }
        }
        started.elapsed()
    })
    .await
    .unwrap();
    // Configured to 2 s; hyper's own default would be 30 s.
    assert!(
        lasted < std::time::Duration::from_secs(20),
        "a dripping client kept its connection for {lasted:?}"
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_too_many_connections_open_is_refused_until_it_closes_some() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    drop(fixture::node(&root));
    fixture::set_gateway_config(
        &root,
        &[
            ("header_timeout_secs", "600"),
            ("max_connections_per_client", "3"),
        ],
    );
    let repo = fixture::node(&root);
    let daemon = fixture::start(repo).await;
    let addr = daemon.http_addr();
    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    fixture::eventually("a fourth connection is refused", || async {
        get(addr, "/").await.status == 429
    })
    .await;
    let refused = get(addr, "/").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("5"));
    drop(idle);
    fixture::eventually("the client's slots are given back", || async {
        get(addr, "/").await.status == 200
    })
    .await;
    let metrics = get(addr, "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with("oermesh_http_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    daemon.shutdown().await.unwrap();
}

/// Runs a command from tests/interop/ and returns its standard output, failing the test
/// with its output when it fails.
fn run_node(mut command: std::process::Command, what: &str) -> String {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipfs_clients_check_every_block_the_gateway_serves() {
    let course = course().await;
    let root = course.cid("course");
    let gateway = format!("http://{}", course.addr());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().to_path_buf();

    // @helia/verified-fetch, fetching raw blocks from the gateway alone and hashing each,
    // through a folder and a sharded folder.
    let (fetched, book) = tokio::task::spawn_blocking({
        let (gateway, out) = (gateway.clone(), out.clone());
        move || {
            let fetch = |resource: String, file: &str| {
                let mut command = crate::tools::node_script("trustless-client.mjs");
                command.arg(&gateway).arg(&resource).arg(out.join(file));
                let line = run_node(command, "verified-fetch");
                let report: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
                assert_eq!(report["status"], 200, "{report}");
                fs::read(out.join(file)).unwrap()
            };
            (
                fetch(format!("{root}/big.bin"), "big.bin"),
                fetch(
                    format!("{root}/shelf/book-03210-with-a-longer-name.txt"),
                    "book.txt",
                ),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(fetched, generated_bytes(BIG_LEN, 7));
    assert_eq!(book, b"book 3210");

    // ipfs-car unpacks our CAR of the whole tree, checking every block's hash.
    let car = get(course.addr(), &format!("/ipfs/{root}?format=car")).await;
    assert_eq!(car.status, 200);
    let car_path = out.join("course.car");
    fs::write(&car_path, &car.body).unwrap();
    let unpacked = out.join("unpacked");
    let unpack = |car: std::path::PathBuf, target: std::path::PathBuf| {
        let mut command = std::process::Command::new("node");
        command
            .arg(crate::tools::node_package_dir().join("node_modules/ipfs-car/bin.js"))
            .arg("unpack")
            .arg(&car)
            .arg("--output")
            .arg(&target)
            .stdin(std::process::Stdio::null());
        command.output().unwrap()
    };
    let output = tokio::task::spawn_blocking({
        let (car_path, unpacked) = (car_path.clone(), unpacked.clone());
        move || unpack(car_path, unpacked)
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        fs::read_to_string(unpacked.join("notes.txt")).unwrap(),
        NOTES
    );
    assert_eq!(
        fs::read(unpacked.join("big.bin")).unwrap(),
        generated_bytes(BIG_LEN, 7)
    );
    assert_eq!(
        fs::read_to_string(unpacked.join("site/index.html")).unwrap(),
        INDEX
    );
    assert_eq!(fs::read_dir(unpacked.join("shelf")).unwrap().count(), 4000);

    // The check is real: a CAR with one flipped byte in a block is refused.
    let mut damaged = car.body.clone();
    let last = damaged.len() - 3;
    damaged[last] ^= 0x01;
    let damaged_path = out.join("damaged.car");
    fs::write(&damaged_path, &damaged).unwrap();
    let refused = tokio::task::spawn_blocking({
        let target = out.join("damaged");
        move || unpack(damaged_path, target)
    })
    .await
    .unwrap();
    assert!(
        !refused.status.success(),
        "ipfs-car accepted a damaged block"
    );
    course.daemon.shutdown().await.unwrap();
}

/// Stands in for a network in which no peer has the block asked for.
struct NoPeerHasIt;

impl oermesh::web::BlockFetcher for NoPeerHasIt {
    fn fetch(
        &self,
        _cid: &Cid,
        within: std::time::Duration,
    ) -> Result<Option<Vec<u8>>, oermesh::block::BlockError> {
        std::thread::sleep(within);
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_asked_of_peers_in_vain_is_504_and_only_if_cached_is_412() {
    let dir = tempfile::tempdir().unwrap();
    let node = fixture::node(&dir.path().join("repo"));
    let here = add_bytes(&node, dir.path(), "here.txt", b"stored here");
    let config = oermesh::web::WebConfig {
        fetch_timeout: std::time::Duration::from_millis(300),
        ..oermesh::web::WebConfig::default()
    };
    let app = oermesh::web::App::new(oermesh::web::WebParts {
        peer_id: libp2p::PeerId::random(),
        node: node.clone(),
        network: None,
        fetcher: Some(std::sync::Arc::new(NoPeerHasIt)),
        metrics: oermesh::metrics::Metrics::new(),
        config,
        search_dir: dir.path().join("search"),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(oermesh::web::serve(listener, app, stopped));

    let missing = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";
    let timed_out = get(addr, &format!("/ipfs/{missing}")).await;
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    assert_eq!(timed_out.header("retry-after"), Some("30"));
    let raw = get(addr, &format!("/ipfs/{missing}?format=raw")).await;
    assert_eq!(raw.status, 504);
    let cached_only = request(
        addr,
        "GET",
        &format!("/ipfs/{missing}"),
        &[("Cache-Control", "only-if-cached")],
    )
    .await;
    assert_eq!(cached_only.status, 412);
    let stored = request(
        addr,
        "GET",
        &format!("/ipfs/{here}"),
        &[("Cache-Control", "only-if-cached")],
    )
    .await;
    assert_eq!(
        (stored.status, stored.text().as_str()),
        (200, "stored here")
    );

    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// The names of the `sheet-` entries a folder listing page shows.
fn sheets_on(html: &str) -> Vec<String> {
    html.split("dir=\"auto\">")
        .skip(1)
        .filter_map(|rest| rest.split('<').next())
        .filter(|name| name.starts_with("sheet-"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_folder_of_10000_entries_is_listed_a_page_at_a_time() {
    use oermesh::unixfs::importer::{build_directory, DirLink};
    let dir = tempfile::tempdir().unwrap();
    let node = fixture::node(&dir.path().join("repo"));
    let batch = node.store().batch();
    let links: Vec<DirLink> = (0..10_000)
        .map(|i| {
            let data = format!("worksheet {i}");
            let cid = oermesh::block::cid_v1(oermesh::block::codec::RAW, data.as_bytes());
            batch.put_block(&cid, data.as_bytes()).unwrap();
            DirLink {
                name: format!("sheet-{i:05}.txt"),
                cid,
                tsize: data.len() as u64,
            }
        })
        .collect();
    let folder = build_directory(links, &Default::default(), &batch)
        .unwrap()
        .cid;
    batch.commit_and_pin(&[folder], "user").unwrap();
    let daemon = fixture::start(node).await;
    let addr = daemon.http_addr();

    let mut seen = HashSet::new();
    let mut tags = HashSet::new();
    let mut target = format!("/ipfs/{folder}/");
    let mut pages = 0;
    let last = loop {
        let page = get(addr, &target).await;
        assert_eq!(page.status, 200, "{target}: {}", page.text());
        assert!(
            page.body.len() < 512 * 1024,
            "a page of {} bytes",
            page.body.len()
        );
        let tag = page.header("etag").unwrap().to_string();
        assert!(tags.insert(tag.clone()), "every page has its own tag");
        let html = page.text();
        let names = sheets_on(&html);
        assert!(
            !names.is_empty() && names.len() <= 500,
            "{} entries on a page",
            names.len()
        );
        for name in names {
            assert!(seen.insert(name.clone()), "{name} shown twice");
        }
        pages += 1;
        let next = html
            .split("href=\"./?")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|query| query.replace("&amp;", "&"));
        match next {
            Some(query) => target = format!("/ipfs/{folder}/?{query}"),
            None => break (target, tag),
        }
        assert!(pages <= 20, "more pages than 10,000 entries fill");
    };
    assert_eq!(seen.len(), 10_000, "every entry, each once");
    assert_eq!(pages, 20);

    // A later page is revalidated by its own tag; a bad `after` is refused.
    let (target, tag) = last;
    let cached = request(addr, "GET", &target, &[("If-None-Match", tag.as_str())]).await;
    assert_eq!(cached.status, 304);
    let bad = get(addr, &format!("/ipfs/{folder}/?after=%01")).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_requests_is_answered_429_while_another_is_served() {
    use crate::http::get_from;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    drop(fixture::node(&root));
    fixture::set_gateway_config(
        &root,
        &[
            ("requests_per_second_per_client", "1"),
            ("request_burst_per_client", "20"),
        ],
    );
    let daemon = fixture::start(fixture::node(&root)).await;
    let addr = daemon.http_addr();
    let flooder: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();

    // A slow machine only lets the flood refill fewer requests: it is refused all
    // the same, after its burst.
    let mut served = 0;
    let refused = loop {
        let response = get_from(flooder, addr, "/").await;
        if response.status == 429 {
            break response;
        }
        assert_eq!(response.status, 200, "{}", response.text());
        served += 1;
        assert!(
            served < 10_000,
            "a flood of {served} requests was never refused"
        );
    };
    assert!(served >= 20, "the burst was served first: {served}");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    assert!(refused.text().contains("too many requests"));

    // Another client is served meanwhile, and the page's style sheet is not counted.
    assert_eq!(get_from(other, addr, "/").await.status, 200);
    assert_eq!(
        get_from(flooder, addr, "/assets/style.css").await.status,
        200
    );
    let metrics = get_from(other, addr, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("oermesh_http_requests_total{route=\"page\",status=\"429\"} ")),
        "{metrics}"
    );
    daemon.shutdown().await.unwrap();
}
