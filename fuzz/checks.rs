//! The fuzz oracles, shared by the libFuzzer targets in `fuzz_targets/` and by the corpus
//! replay in the workspace's `tests/fuzz_corpus.rs` (which runs on stable, in CI).
//!
//! Each check takes arbitrary bytes and panics only if netrpc misbehaves: a panic inside the
//! decoder or codec, or results that depend on how the bytes were split.

use bytes::{Bytes, BytesMut};
use rpc_codec::{Codec, CodecKind};
use rpc_transport::{Frame, FrameDecoder, FrameKind, FrameLimits, TransportError};
use serde::{Deserialize, Serialize};

/// Small limits, so that lengths near them are reachable by the fuzzer.
fn limits() -> FrameLimits {
    FrameLimits {
        max_body_len: 4096,
        max_name_len: 64,
        max_metadata_len: 256,
        ..FrameLimits::default()
    }
}

/// What decoding a byte stream produced: its frames, then the error that stopped it (if any),
/// then whether end of input was clean.
#[derive(Debug, PartialEq)]
struct Decoded {
    frames: Vec<Frame>,
    error: Option<TransportError>,
    eof: Result<(), TransportError>,
}

fn decode(chunks: impl Iterator<Item = Vec<u8>>) -> Decoded {
    let mut decoder = FrameDecoder::new(limits());
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for chunk in chunks {
        decoder.handle_bytes(&chunk);
        loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    error = Some(err);
                    break 'feed;
                }
            }
        }
    }
    let eof = decoder.handle_eof();
    Decoded { frames, error, eof }
}

/// The first byte picks chunk sizes (1 to 64, varying); the rest is the stream. Decoding in
/// those chunks must give exactly what decoding in one piece gives.
pub fn frame_decode(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(std::iter::once(stream.to_vec()));
    let mut sizes = (0usize..).map(|i| 1 + (usize::from(seed) * 31 + i * 17) % 64);
    let mut rest = stream;
    let chunks = std::iter::from_fn(|| {
        if rest.is_empty() {
            return None;
        }
        let take = sizes.next().unwrap_or(1).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        Some(chunk.to_vec())
    });
    let chunked = decode(chunks);
    // Magic and version are refused from their first bytes, so a chunked decode may stop
    // earlier with the same error; frames before it and the error itself must agree.
    assert_eq!(
        whole.frames, chunked.frames,
        "frames depend on the chunking"
    );
    assert_eq!(whole.error, chunked.error, "errors depend on the chunking");
    if whole.error.is_none() {
        assert_eq!(
            whole.eof, chunked.eof,
            "end of stream depends on the chunking"
        );
    }
}

/// Builds a frame from arbitrary bytes; encoding it and decoding the result gives it back,
/// or the encoder refuses it for a limit the decoder would also refuse.
pub fn frame_roundtrip(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let kind = FrameKind::ALL[usize::from(data[0]) % FrameKind::ALL.len()];
    let mut frame = Frame::new(
        kind,
        u64::from_le_bytes(data[1..9].try_into().unwrap_or_default()),
    );
    frame.flags = data[9];
    frame.codec = data[10];
    frame.deadline_ms = u32::from_le_bytes(data[11..15].try_into().unwrap_or_default());
    let rest = &data[16..];
    let name_len = (usize::from(data[15]) % 80).min(rest.len());
    let (name, rest) = rest.split_at(name_len);
    let metadata_len = (rest.len() / 3).min(300);
    let (metadata, body) = rest.split_at(metadata_len);
    frame.name = Bytes::copy_from_slice(name);
    frame.metadata = Bytes::copy_from_slice(metadata);
    frame.body = Bytes::copy_from_slice(body);

    let mut out = BytesMut::new();
    match frame.encode(&mut out, &limits()) {
        Ok(()) => {
            assert_eq!(out.len(), frame.encoded_len());
            let decoded = decode(std::iter::once(out.to_vec()));
            assert_eq!(decoded.frames, vec![frame], "round trip changed the frame");
            assert_eq!((decoded.error, decoded.eof), (None, Ok(())));
        }
        Err(_) => assert!(out.is_empty(), "a refused frame wrote bytes"),
    }
}

/// The tutorials' argument type.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[allow(non_snake_case)]
struct Args {
    A: i64,
    B: i64,
}

/// A request/reply-like type with every serde shape.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Message {
    Empty,
    Text(String),
    Pair { key: String, value: Option<Vec<u8>> },
    Many(Vec<(u32, bool)>),
    Map(std::collections::BTreeMap<String, f64>),
}

/// A recursive type: the depth guard must stop it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Tree(Vec<Tree>);

/// Decodes the bytes as each type in each codec: any outcome but a panic is fine, and a value
/// that decodes must survive a round trip.
pub fn codec_decode(data: &[u8]) {
    for codec in CodecKind::all() {
        check_type::<Args>(*codec, data);
        check_type::<Message>(*codec, data);
        check_type::<Tree>(*codec, data);
        check_type::<Vec<()>>(*codec, data);
        check_type::<std::collections::BTreeSet<()>>(*codec, data);
        check_type::<String>(*codec, data);
    }
}

fn check_type<T>(codec: CodecKind, data: &[u8])
where
    T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = codec.decode::<T>(data) {
        let mut out = BytesMut::new();
        codec
            .encode(&value, &mut out)
            .expect("a decoded value encodes");
        let again: T = codec.decode(&out).expect("an encoded value decodes");
        // NaN never equals itself: compare the encodings instead of the values.
        let mut twice = BytesMut::new();
        codec.encode(&again, &mut twice).expect("encodes again");
        assert_eq!(out, twice, "round trip is not stable");
    }
}
