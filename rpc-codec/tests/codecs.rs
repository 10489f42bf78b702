//! What every codec promises its users: values survive a round trip, ids are stable, and
//! wrong bytes of any kind (truncated, trailing, another codec's, a bad tag, bad UTF-8) end in
//! a `CodecError` that names the codec, never a panic or a plausible wrong value.

#![cfg(feature = "json")]
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::collections::BTreeMap;

use bytes::BytesMut;
use rpc_codec::{Codec, CodecError, CodecKind, Json, Postcard};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(non_snake_case)] // Go's field names, as in the tutorials
struct Args {
    A: i64,
    B: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Point,
    Circle { radius: f64 },
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Everything {
    args: Args,
    shapes: Vec<Shape>,
    maybe: Option<u32>,
    bytes: Vec<u8>,
    index: BTreeMap<String, u64>,
    nested: Vec<Vec<i16>>,
    unit: (),
    flag: bool,
}

fn everything() -> Everything {
    Everything {
        args: Args { A: -7, B: i64::MAX },
        shapes: vec![
            Shape::Point,
            Shape::Circle { radius: 1.5 },
            Shape::Label("héllo".into()),
        ],
        maybe: Some(42),
        bytes: (0..=255).collect(),
        index: [("one".to_string(), 1), ("two".to_string(), 2)].into(),
        nested: vec![vec![], vec![-1, 2, -3]],
        unit: (),
        flag: true,
    }
}

fn encode<T: Serialize>(codec: CodecKind, value: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec.encode(value, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn every_codec_round_trips_every_shape_of_value() {
    for &codec in CodecKind::all() {
        let value = everything();
        let bytes = encode(codec, &value);
        let back: Everything = codec.decode(&bytes).unwrap();
        assert_eq!(back, value, "{}", codec.name());
    }
}

#[test]
fn every_f64_comes_back_bit_for_bit() {
    // -0.011111111111111101 is what fuzzing found: JSON printed it in its shortest form, and
    // a parser that is not correctly rounded read that back one unit in the last place off.
    let values = [
        -0.011111111111111101,
        103000000.0,
        0.1 + 0.2,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        1.0 / 3.0,
        -0.0,
        std::f64::consts::PI,
    ];
    for &codec in CodecKind::all() {
        for value in values {
            let back: f64 = codec.decode(&encode(codec, &value)).unwrap();
            assert_eq!(
                back.to_bits(),
                value.to_bits(),
                "{}: {value:e}",
                codec.name()
            );
        }
    }
}

#[test]
fn encoding_appends_to_what_the_buffer_already_holds() {
    let mut out = BytesMut::from(&b"head"[..]);
    Postcard.encode(&Args { A: 7, B: 8 }, &mut out).unwrap();
    assert_eq!(&out[..], b"head\x0e\x10");
}

#[test]
fn the_tutorial_args_have_known_encodings() {
    let args = Args { A: 7, B: 8 };
    assert_eq!(encode(CodecKind::Postcard, &args), [0x0e, 0x10]);
    assert_eq!(encode(CodecKind::Json, &args), br#"{"A":7,"B":8}"#);
}

#[test]
fn ids_and_names_are_stable() {
    assert_eq!((Postcard.id(), Postcard.name()), (1, "postcard"));
    assert_eq!((Json.id(), Json.name()), (2, "json"));
    for &codec in CodecKind::all() {
        assert_eq!(CodecKind::from_id(codec.id()), Some(codec));
    }
    assert_eq!(CodecKind::from_id(0), None);
    assert_eq!(CodecKind::from_id(3), None);
    assert_eq!(CodecKind::default(), CodecKind::Postcard);
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    for &codec in CodecKind::all() {
        let bytes = encode(codec, &everything());
        for len in 0..bytes.len() {
            let result = codec.decode::<Everything>(&bytes[..len]);
            let err = result.expect_err("a truncated value must not decode");
            assert_eq!(err.codec(), codec.name(), "len {len}");
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode(CodecKind::Postcard, &Args { A: 7, B: 8 });
    bytes.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        Postcard.decode::<Args>(&bytes),
        Err(CodecError::TrailingBytes {
            codec: "postcard",
            count: 3
        })
    );

    let err = Json.decode::<Args>(br#"{"A":7,"B":8} {}"#).unwrap_err();
    assert!(
        matches!(err, CodecError::Decode { codec: "json", .. }),
        "{err}"
    );
    assert!(
        Json.decode::<Args>(b"{\"A\":7,\"B\":8}\n ").is_ok(),
        "trailing whitespace is not data"
    );
}

#[test]
fn another_codecs_bytes_never_decode_as_a_value() {
    // Postcard would read `{"` as two integers and stop; strictness turns that into an error.
    let json = encode(CodecKind::Json, &Args { A: 7, B: 8 });
    let err = Postcard.decode::<Args>(&json).unwrap_err();
    assert_eq!(err.codec(), "postcard");

    let postcard = encode(CodecKind::Postcard, &Args { A: 7, B: 8 });
    let err = Json.decode::<Args>(&postcard).unwrap_err();
    assert_eq!(err.codec(), "json");
}

#[test]
fn an_unknown_enum_tag_is_a_decode_error() {
    let err = Postcard.decode::<Shape>(&[9]).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Decode {
                codec: "postcard",
                ..
            }
        ),
        "{err}"
    );
    let err = Json.decode::<Shape>(br#""Square""#).unwrap_err();
    assert!(
        matches!(err, CodecError::Decode { codec: "json", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("Square"),
        "the detail says what: {err}"
    );
}

#[test]
fn invalid_utf8_in_a_string_is_a_decode_error() {
    let err = Postcard.decode::<String>(&[2, 0xc3, 0x28]).unwrap_err();
    assert!(
        matches!(
            err,
            CodecError::Decode {
                codec: "postcard",
                ..
            }
        ),
        "{err}"
    );
    let err = Json.decode::<String>(b"\"\xc3\x28\"").unwrap_err();
    assert!(
        matches!(err, CodecError::Decode { codec: "json", .. }),
        "{err}"
    );
}

#[test]
fn errors_say_which_codec_and_what_failed() {
    let err = Postcard.decode::<Args>(&[0x0e]).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("postcard decode failed: "), "{text}");
    let err = Json.decode::<Args>(br#"{"A":7}"#).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("json decode failed: "), "{text}");
    assert!(text.contains("missing field `B`"), "{text}");
}

#[test]
fn values_serde_cannot_represent_fail_to_encode_with_a_typed_error() {
    // JSON map keys must be strings; a map keyed by a tuple cannot be written.
    let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let err = Json.encode(&map, &mut BytesMut::new()).unwrap_err();
    assert!(
        matches!(err, CodecError::Encode { codec: "json", .. }),
        "{err}"
    );
    assert!(Postcard.encode(&map, &mut BytesMut::new()).is_ok());
}

#[test]
fn long_lists_of_fixed_size_values_decode_in_every_codec() {
    // Postcard decodes an array, a tuple and a struct element by element, with no length
    // on the wire: 5,000 hashes of 32 bytes are 160,000 elements in 160,002 bytes. Only
    // lengths the input declares count against the guard's element budget.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: u8,
        y: u8,
    }
    let hashes = vec![[7u8; 32]; 5_000];
    let pairs: Vec<(u8, u8)> = (0..10_000).map(|i| (i as u8, 1)).collect();
    let points: Vec<Point> = (0..10_000).map(|i| Point { x: i as u8, y: 2 }).collect();
    for codec in CodecKind::all() {
        let decoded: Vec<[u8; 32]> = codec.decode(&encode(*codec, &hashes)).unwrap();
        assert_eq!(decoded, hashes, "{codec:?}");
        let decoded: Vec<(u8, u8)> = codec.decode(&encode(*codec, &pairs)).unwrap();
        assert_eq!(decoded, pairs, "{codec:?}");
        let decoded: Vec<Point> = codec.decode(&encode(*codec, &points)).unwrap();
        assert_eq!(decoded, points, "{codec:?}");
    }
}
