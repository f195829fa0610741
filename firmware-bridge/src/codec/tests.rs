//! Codec tests: golden bytes for every message, round trips, resync after
//! garbage, half frames and oversize frames, and no panic on any input.

use super::*;
use proptest::prelude::*;

fn all_messages() -> [Message<'static>; 11] {
    [
        Message::Challenge { nonce: [7; 16] },
        Message::Hello {
            device: "scale-1",
            boot: 3,
            firmware: "1.2.0",
            proof: [0xab; 32],
        },
        Message::Weight {
            grams: 1250,
            stable: true,
        },
        Message::StockEvent {
            seq: 42,
            sku: "potato-fries",
            kind: StockKind::Waste,
            qty: 350,
            unit: Unit::G,
        },
        Message::Ack { seq: 42 },
        Message::Availability {
            dish: "fries",
            status: Status::SoldOut,
            portions: 0,
        },
        Message::Subscribe { dish: "fries" },
        Message::Ping { n: 1 },
        Message::Pong { n: 1 },
        Message::Error { code: 3 },
        Message::Refused { seq: 42, code: 7 },
    ]
}

fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME];
    let n = encode(msg, &mut out).expect("encodes");
    out[..n].to_vec()
}

fn decode_all(bytes: &[u8]) -> Vec<Result<String, DecodeError>> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for &b in bytes {
        if let Some(r) = d.push(b) {
            out.push(r.map(|m| format!("{m:?}")));
        }
    }
    out
}

/// The bytes of every message, fixed forever: a change here breaks every
/// deployed device. (PROTOCOL.md walks through the first ones.)
const GOLDEN: [&[u8]; 11] = GOLDEN_VECTORS;

include!("golden.rs");

#[test]
fn golden_vectors() {
    for (msg, want) in all_messages().iter().zip(GOLDEN) {
        assert_eq!(frame(msg), want, "{msg:?}");
    }
}

#[test]
fn every_message_round_trips() {
    for msg in all_messages() {
        let mut bytes = frame(&msg);
        assert_eq!(bytes.last(), Some(&0));
        assert!(
            bytes[..bytes.len() - 1].iter().all(|b| *b != 0),
            "no zero inside a frame"
        );
        let n = bytes.len() - 1;
        assert_eq!(decode_frame(&mut bytes[..n]), Ok(msg));
    }
}

#[test]
fn resynchronises_after_garbage_half_frames_and_oversize() {
    let ping = frame(&Message::Ping { n: 9 });
    let ack = frame(&Message::Ack { seq: 5 });
    let mut stream = vec![0x13, 0x37, 0x00];
    stream.extend_from_slice(&ping[..ping.len() / 2]);
    stream.push(0);
    stream.extend(std::iter::repeat_n(0x55, MAX_FRAME + 20));
    stream.push(0);
    stream.push(0);
    stream.extend_from_slice(&ack);
    let mut corrupted = ping.clone();
    corrupted[2] ^= 0x01;
    stream.extend_from_slice(&corrupted);
    stream.extend_from_slice(&ping);
    let got = decode_all(&stream);
    assert_eq!(got.len(), 7, "{got:?}");
    assert!(got[0].is_err() && got[1].is_err());
    assert_eq!(got[2], Err(DecodeError::Oversize));
    assert_eq!(got[3], Err(DecodeError::Empty));
    assert_eq!(got[4], Ok(format!("{:?}", Message::Ack { seq: 5 })));
    assert!(
        matches!(got[5], Err(DecodeError::Crc) | Err(DecodeError::Cobs)),
        "{:?}",
        got[5]
    );
    assert_eq!(got[6], Ok(format!("{:?}", Message::Ping { n: 9 })));
}

#[test]
fn strings_too_long_for_a_frame_are_refused() {
    let long = "x".repeat(300);
    let msg = Message::Subscribe { dish: &long };
    let mut out = [0u8; 512];
    assert_eq!(encode(&msg, &mut out), Err(EncodeError::TooLarge));
    let mut small = [0u8; 4];
    assert_eq!(
        encode(&Message::Ping { n: 1 }, &mut small),
        Err(EncodeError::BufferTooSmall)
    );
}

proptest! {
    #[test]
    fn never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut d = Decoder::new();
        for b in bytes {
            let _ = d.push(b);
        }
    }

    #[test]
    fn stock_events_round_trip(seq in any::<u32>(), qty in any::<i32>(), sku in "[a-z0-9-]{1,64}") {
        let msg = Message::StockEvent { seq, sku: &sku, kind: StockKind::Adjust, qty, unit: Unit::Pcs };
        let mut bytes = frame(&msg);
        let n = bytes.len() - 1;
        prop_assert_eq!(decode_frame(&mut bytes[..n]), Ok(msg));
    }
}

#[test]
#[ignore = "prints the golden vectors for golden.rs"]
fn print_golden() {
    for msg in all_messages() {
        println!("    &{:?},", frame(&msg));
    }
}
