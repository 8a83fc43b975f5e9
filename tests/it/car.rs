//! CARv1 reading and writing, including hostile archives.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Cursor};

use cid::Cid;
use ipld_core::ipld::Ipld;
use multihash::Multihash;
use oermesh::block::{cid_v1, codec, BlockError, BlockGet, BlockPut, MemoryBlocks};
use oermesh::car::{export_dag, CarError, CarReader, CarWriter, MAX_BLOCK_BYTES};
use oermesh::links::LinkError;
use oermesh::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};
use oermesh::unixfs::reader;

/// The IPLD spec's `carv1-basic` fixture as go-car writes it (blocks in depth-first order
/// from the roots), from `goCarBytes` in ipld/js-car `test/common.js`.
const CARV1_BASIC_HEX: &str = "63a265726f6f747382d82a58250001711220f88bc853804cf294fe417e4fa83028689fcdb1b1592c5102e1474dbc200fab8bd82a5825000171122069ea0740f9807a28f4d932c62e7c1c83be055e55072c90266ab3e79df63a365b6776657273696f6e015b01711220f88bc853804cf294fe417e4fa83028689fcdb1b1592c5102e1474dbc200fab8ba2646c696e6bd82a582300122002acecc5de2438ea4126a3010ecb1f8a599c8eff22fff1a1dcffe999b27fd3de646e616d6564626c69708301122002acecc5de2438ea4126a3010ecb1f8a599c8eff22fff1a1dcffe999b27fd3de122e0a2401551220b6fbd675f98e2abd22d4ed29fdc83150fedc48597e92dd1a7a24381d44a274511204626561721804122f0a22122079a982de3c9907953d4d323cee1d0fb1ed8f45f8ef02870c0cb9e09246bd530a12067365636f6e641895012801551220b6fbd675f98e2abd22d4ed29fdc83150fedc48597e92dd1a7a24381d44a27451636363638001122079a982de3c9907953d4d323cee1d0fb1ed8f45f8ef02870c0cb9e09246bd530a122d0a240155122081cc5b17018674b401b42f35ba07bb79e211239c23bffe658da1577e3e6468771203646f671804122d0a221220e7dc486e97e6ebe5cdabab3e392bdad128b6e09acc94bb4e2aa2af7b986d24d0120566697273741833280155122081cc5b17018674b401b42f35ba07bb79e211239c23bffe658da1577e3e64687762626262511220e7dc486e97e6ebe5cdabab3e392bdad128b6e09acc94bb4e2aa2af7b986d24d0122d0a240155122061be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b412036361741804280155122061be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b461616161360171122069ea0740f9807a28f4d932c62e7c1c83be055e55072c90266ab3e79df63a365ba2646c696e6bf6646e616d65656c696d626f";

/// The fixture's roots and blocks in file order, from the same source (`goCarIndex`).
const CARV1_BASIC_ROOTS: [&str; 2] = [
    "bafyreihyrpefhacm6kkp4ql6j6udakdit7g3dmkzfriqfykhjw6cad5lrm",
    "bafyreidj5idub6mapiupjwjsyyxhyhedxycv4vihfsicm2vt46o7morwlm",
];
const CARV1_BASIC_BLOCKS: [&str; 8] = [
    "bafyreihyrpefhacm6kkp4ql6j6udakdit7g3dmkzfriqfykhjw6cad5lrm",
    "QmNX6Tffavsya4xgBi2VJQnSuqy9GsxongxZZ9uZBqp16d",
    "bafkreifw7plhl6mofk6sfvhnfh64qmkq73oeqwl6sloru6rehaoujituke",
    "QmWXZxVQ9yZfhQxLD35eDR8LiMRsYtHxYqTFCBbJoiJVys",
    "bafkreiebzrnroamgos2adnbpgw5apo3z4iishhbdx77gldnbk57d4zdio4",
    "QmdwjhxpxzcMsR3qUuj7vUL8pbA7MgR3GAxWi2GLHjsKCT",
    "bafkreidbxzk2ryxwwtqxem4l3xyyjvw35yu4tcct4cqeqxwo47zhxgxqwq",
    "bafyreidj5idub6mapiupjwjsyyxhyhedxycv4vihfsicm2vt46o7morwlm",
];

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn fixture() -> Vec<u8> {
    hex(CARV1_BASIC_HEX)
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

/// Roots and blocks of a whole archive.
type CarContents = (Vec<Cid>, Vec<(Cid, Vec<u8>)>);

fn read_all(bytes: &[u8]) -> Result<CarContents, CarError> {
    let mut reader = CarReader::new(Cursor::new(bytes))?;
    let roots = reader.roots().to_vec();
    let blocks = reader.by_ref().collect::<Result<Vec<_>, _>>()?;
    assert!(reader.next_block().is_none(), "the reader stays finished");
    Ok((roots, blocks))
}

/// Where each section starts and where its data starts, for the well-formed `bytes`.
fn section_layout(bytes: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut sections = Vec::new();
    let mut offset = 0;
    let mut first = true;
    while offset < bytes.len() {
        let (len, used) = decode_varint(&bytes[offset..]);
        let body = offset + used;
        if !first {
            let cid = Cid::read_bytes(&bytes[body..]).unwrap();
            sections.push((offset, body + cid.encoded_len(), body + len));
        }
        first = false;
        offset = body + len;
    }
    sections
}

fn decode_varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (index, byte) in bytes.iter().enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return (value, index + 1);
        }
    }
    panic!("unterminated varint");
}

#[test]
fn reads_the_carv1_basic_fixture() {
    let (roots, blocks) = read_all(&fixture()).unwrap();
    let names: Vec<String> = roots.iter().map(Cid::to_string).collect();
    assert_eq!(names, CARV1_BASIC_ROOTS);
    let names: Vec<String> = blocks.iter().map(|(cid, _)| cid.to_string()).collect();
    assert_eq!(names, CARV1_BASIC_BLOCKS);
    assert_eq!(blocks[6].1, b"aaaa");
}

#[test]
fn export_reproduces_the_fixture_byte_for_byte() {
    let (roots, blocks) = read_all(&fixture()).unwrap();
    let store = MemoryBlocks::new();
    for (cid, data) in &blocks {
        store.put_block(cid, data).unwrap();
    }
    let mut out = Vec::new();
    let summary = export_dag(&store, &roots, &mut out).unwrap();
    assert_eq!(summary.blocks, 8);
    assert_eq!(out, fixture());

    let mut writer = CarWriter::new(Vec::new(), &roots).unwrap();
    for (cid, data) in &blocks {
        writer.write_block(cid, data).unwrap();
    }
    assert_eq!(writer.finish().unwrap(), fixture());
}

/// A small UnixFS tree: a directory holding a two-leaf file, shared by two names.
fn sample_store() -> (MemoryBlocks, Cid, Vec<u8>) {
    let store = MemoryBlocks::new();
    let put = |codec: u64, bytes: Vec<u8>| {
        let cid = cid_v1(codec, &bytes);
        store.put_block(&cid, &bytes).unwrap();
        cid
    };
    let parts = [vec![1u8; 3000], vec![2u8; 500]];
    let leaves: Vec<Cid> = parts
        .iter()
        .map(|part| put(codec::RAW, part.clone()))
        .collect();
    let mut file = UnixfsData::new(DataType::File);
    file.filesize = Some(3500);
    file.blocksizes = vec![3000, 500];
    let links = leaves
        .iter()
        .zip([3000, 500])
        .map(|(cid, size)| PbLink {
            cid: *cid,
            name: Some(String::new()),
            tsize: Some(size),
        })
        .collect();
    let file_cid = put(
        codec::DAG_PB,
        PbNode {
            links,
            data: Some(file.encode()),
        }
        .encode(),
    );
    let entry = |name: &str| PbLink {
        cid: file_cid,
        name: Some(name.into()),
        tsize: Some(3600),
    };
    let dir = PbNode {
        links: vec![entry("a.bin"), entry("b.bin")],
        data: Some(UnixfsData::new(DataType::Directory).encode()),
    };
    let root = put(codec::DAG_PB, dir.encode());
    (store, root, parts.concat())
}

#[test]
fn round_trips_a_unixfs_tree_through_a_file() {
    let (store, root, content) = sample_store();
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("tree.car");
    let summary = export_dag(
        &store,
        &[root],
        BufWriter::new(File::create(&path).unwrap()),
    )
    .unwrap();
    assert_eq!(summary.blocks, 4, "the shared file is written once");

    let mut reader = CarReader::new(File::open(&path).unwrap()).unwrap();
    assert_eq!(reader.roots(), [root]);
    let copy = MemoryBlocks::new();
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    while let Some(block) = reader.next_block() {
        let (cid, data) = block.unwrap();
        assert!(seen.insert(cid), "{cid} written twice");
        order.push(cid);
        copy.put_block(&cid, &data).unwrap();
    }
    assert_eq!(order[0], root, "roots first");
    assert_eq!(seen.len() as u64, summary.blocks);
    let file = reader::resolve(&copy, &root, "b.bin").unwrap();
    let mut out = Vec::new();
    reader::read_file(&copy, &file, &mut out).unwrap();
    assert_eq!(out, content);
}

#[test]
fn export_stops_at_a_corrupt_or_missing_block() {
    let (store, root, _) = sample_store();
    let leaf = cid_v1(codec::RAW, &[2u8; 500]);
    store.put_block(&leaf, &[3u8; 500]).unwrap();
    let err = export_dag(&store, &[root], Vec::new()).unwrap_err();
    assert!(
        matches!(&err, CarError::Links(inner) if matches!(**inner, LinkError::Block(BlockError::Corrupt(cid)) if cid == leaf)),
        "{err}"
    );
    let absent = cid_v1(codec::RAW, b"absent");
    assert!(store.get_block(&absent).is_err());
    assert!(matches!(
        export_dag(&store, &[absent], Vec::new()),
        Err(CarError::Links(_))
    ));
}

#[test]
fn every_truncation_is_reported() {
    let bytes = fixture();
    let boundaries: HashSet<usize> = section_layout(&bytes)
        .iter()
        .map(|(start, ..)| *start)
        .collect();
    let header_end = section_layout(&bytes)[0].0;
    for cut in 0..bytes.len() {
        let result = read_all(&bytes[..cut]);
        if cut >= header_end && boundaries.contains(&cut) {
            // A cut between sections is indistinguishable from a shorter archive.
            assert!(result.is_ok(), "cut at {cut}");
        } else {
            assert!(
                matches!(result, Err(CarError::Truncated { .. })),
                "cut at {cut}: {result:?}"
            );
        }
    }
}

#[test]
fn trailing_garbage_is_an_error() {
    for garbage in [&[0x07u8, 0x01][..], &[0x80], &[0x00]] {
        let mut bytes = fixture();
        bytes.extend_from_slice(garbage);
        let err = read_all(&bytes).unwrap_err();
        assert!(
            matches!(err, CarError::Truncated { .. } | CarError::BadCid { .. }),
            "{garbage:?}: {err}"
        );
    }
}

#[test]
fn a_flipped_bit_in_any_block_is_caught() {
    let bytes = fixture();
    for (_, data_start, data_end) in section_layout(&bytes) {
        for position in data_start..data_end {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x04;
            let err = read_all(&damaged).unwrap_err();
            assert!(
                matches!(err, CarError::Block(BlockError::Corrupt(_))),
                "byte {position}: {err}"
            );
        }
    }
}

fn header_bytes(header: &Ipld) -> Vec<u8> {
    let encoded = serde_ipld_dagcbor::to_vec(header).unwrap();
    let mut bytes = varint(encoded.len() as u64);
    bytes.extend_from_slice(&encoded);
    bytes
}

fn header(roots: Vec<Ipld>, version: i128) -> Ipld {
    let mut fields = BTreeMap::new();
    fields.insert("roots".to_string(), Ipld::List(roots));
    fields.insert("version".to_string(), Ipld::Integer(version));
    Ipld::Map(fields)
}

fn valid_prefix() -> Vec<u8> {
    header_bytes(&header(vec![Ipld::Link(cid_v1(codec::RAW, b"x"))], 1))
}

#[test]
fn hostile_headers_are_rejected() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty input", vec![]),
        ("overlong varint", vec![0xff; 12]),
        ("huge header length", varint(64 << 20)),
        ("zero-length header", vec![0x00]),
        ("not a map", header_bytes(&Ipld::List(vec![]))),
        ("garbage cbor", vec![0x03, 0xff, 0xff, 0xff]),
        ("carv2 pragma", hex("0aa16776657273696f6e02")),
        (
            "version 2",
            header_bytes(&header(vec![Ipld::Link(cid_v1(codec::RAW, b"x"))], 2)),
        ),
        ("no roots", header_bytes(&header(vec![], 1))),
        (
            "root not a link",
            header_bytes(&header(vec![Ipld::String("x".into())], 1)),
        ),
    ];
    for (name, bytes) in cases {
        let err = read_all(&bytes).unwrap_err();
        let expected = match name {
            "empty input" => matches!(err, CarError::Truncated { .. }),
            "overlong varint" => matches!(err, CarError::BadVarint { offset: 0 }),
            "huge header length" => matches!(err, CarError::HeaderTooLarge { .. }),
            "carv2 pragma" | "version 2" => matches!(err, CarError::UnsupportedVersion(2)),
            "no roots" => matches!(err, CarError::NoRoots),
            _ => matches!(err, CarError::BadHeader(_)),
        };
        assert!(expected, "{name}: {err}");
    }
}

#[test]
fn hostile_sections_are_rejected_before_allocating() {
    let with = |tail: &[u8]| [valid_prefix(), tail.to_vec()].concat();
    let header_len = valid_prefix().len() as u64;

    let err = read_all(&with(&varint(1 << 40))).unwrap_err();
    assert!(
        matches!(err, CarError::SectionTooLarge { offset, .. } if offset == header_len),
        "{err}"
    );

    let err = read_all(&with(&[0xff; 10])).unwrap_err();
    assert!(matches!(err, CarError::BadVarint { .. }), "{err}");

    for bad_cid in [
        &[0x03u8, 0x55, 0x12, 0x20][..],
        &[0x01, 0x55, 0x12, 0x20, 0x00],
        &[],
    ] {
        let mut section = varint(bad_cid.len() as u64);
        section.extend_from_slice(bad_cid);
        let err = read_all(&with(&section)).unwrap_err();
        assert!(matches!(err, CarError::BadCid { .. }), "{bad_cid:?}: {err}");
    }

    // A block named by a hash oermesh cannot check (blake3).
    let blake3 = Cid::new_v1(codec::RAW, Multihash::wrap(0x1e, &[0u8; 32]).unwrap());
    let mut section = varint(blake3.encoded_len() as u64 + 4);
    section.extend_from_slice(&blake3.to_bytes());
    section.extend_from_slice(b"data");
    let err = read_all(&with(&section)).unwrap_err();
    assert!(
        matches!(
            err,
            CarError::Block(BlockError::UnsupportedHash { code: 0x1e, .. })
        ),
        "{err}"
    );

    // Within the section limit but above the block limit.
    let cid = cid_v1(codec::RAW, b"y");
    let data = vec![0u8; MAX_BLOCK_BYTES + 60];
    let mut section = varint((cid.encoded_len() + data.len()) as u64);
    section.extend_from_slice(&cid.to_bytes());
    section.extend_from_slice(&data);
    let err = read_all(&with(&section)).unwrap_err();
    assert!(
        matches!(err, CarError::Block(BlockError::TooLarge { .. })),
        "{err}"
    );
}

#[test]
fn writer_refuses_what_readers_would_reject() {
    assert!(matches!(
        CarWriter::new(Vec::new(), &[]),
        Err(CarError::NoRoots)
    ));
    let cid = cid_v1(codec::RAW, b"z");
    let mut writer = CarWriter::new(Vec::new(), &[cid]).unwrap();
    let big = vec![0u8; MAX_BLOCK_BYTES + 1];
    assert!(matches!(
        writer.write_block(&cid_v1(codec::RAW, &big), &big),
        Err(CarError::Block(BlockError::TooLarge { .. }))
    ));
    writer.write_block(&cid, b"z").unwrap();
    let (roots, blocks) = read_all(&writer.finish().unwrap()).unwrap();
    assert_eq!((roots, blocks), (vec![cid], vec![(cid, b"z".to_vec())]));
}
