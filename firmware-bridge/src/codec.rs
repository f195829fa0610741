//! Messages and frames between a microcontroller device and the bridge.
//!
//! A frame on the wire is `COBS(postcard(message) ‖ CRC-32(postcard bytes))`
//! followed by one `0x00`. COBS removes every zero from the body, so `0x00`
//! only ever ends a frame, and a receiver that joins mid-stream or sees
//! garbage resynchronises at the next `0x00`. Messages borrow their strings
//! from the receive buffer: nothing is allocated.
//!
//! Invariants: [`encode`] never writes more than [`MAX_FRAME`] bytes;
//! [`Decoder::push`] never panics and never holds more than its buffer, on
//! any input.

use crc::{Crc, CRC_32_ISO_HDLC};
use serde::{Deserialize, Serialize};

/// Largest frame on the wire, delimiter included, in bytes.
pub const MAX_FRAME: usize = 256;

/// Largest postcard body (the CRC and COBS overhead fit in the rest).
const MAX_BODY: usize = MAX_FRAME - 4 - 4;

const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// What a stock event does (as on the MQTT contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockKind {
    /// Goods received.
    Receive,
    /// Used outside recipes.
    Consume,
    /// Thrown away.
    Waste,
    /// Absolute stocktake.
    Count,
    /// Signed correction.
    Adjust,
}

/// The unit of a quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// Grams.
    G,
    /// Millilitres.
    Ml,
    /// Pieces.
    Pcs,
}

/// A dish's status as a sold-out board shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Can be sold.
    Available,
    /// Few portions left.
    Low,
    /// Cannot be sold.
    SoldOut,
}

/// Every message of the protocol. The variant order is the wire
/// discriminant: never reorder, only append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// bridge → device, first on every connection: a fresh random nonce.
    Challenge {
        /// 16 random bytes.
        nonce: [u8; 16],
    },
    /// device → bridge: who it is, proven by
    /// `HMAC-SHA256(device key, nonce ‖ device ‖ boot as 4 bytes LE)`.
    Hello {
        /// The device id (as configured in the broker).
        device: &'a str,
        /// Changes at every power-up (a counter in flash, or random).
        boot: u32,
        /// Firmware version, free text.
        firmware: &'a str,
        /// The HMAC above.
        proof: [u8; 32],
    },
    /// device → bridge: a scale reading.
    Weight {
        /// Grams on the platform.
        grams: i32,
        /// Whether the reading has settled.
        stable: bool,
    },
    /// device → bridge: a stock change, retransmitted until acknowledged.
    StockEvent {
        /// Increases by one per event within a boot.
        seq: u32,
        /// The SKU.
        sku: &'a str,
        /// What happened.
        kind: StockKind,
        /// How much, in `unit` (signed for `Adjust`).
        qty: i32,
        /// The unit.
        unit: Unit,
    },
    /// bridge → device: event `seq` is durably applied (or refused for good).
    Ack {
        /// The event's sequence number.
        seq: u32,
    },
    /// bridge → device: a subscribed dish's availability.
    Availability {
        /// The dish.
        dish: &'a str,
        /// What to show.
        status: Status,
        /// Portions left.
        portions: u32,
    },
    /// device → bridge: push this dish's availability to me (one dish per
    /// message; send several).
    Subscribe {
        /// The dish.
        dish: &'a str,
    },
    /// Either way: are you there?
    Ping {
        /// Echoed in the pong.
        n: u32,
    },
    /// Either way: yes.
    Pong {
        /// The ping's number.
        n: u32,
    },
    /// bridge → device: something went wrong.
    Error {
        /// 1 bad frame, 2 not authenticated, 3 authentication failed,
        /// 4 unknown SKU or dish, 5 refused by the broker, 6 busy.
        code: u8,
    },
    /// bridge → device: stock event `seq` is refused for good and nothing
    /// of it was applied; its `Ack` follows, so the device drops it.
    Refused {
        /// The event's sequence number.
        seq: u32,
        /// 4 unknown SKU, 5 refused by the broker, 7 this seq was already
        /// sent in this boot with other content.
        code: u8,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message (strings too long) does not fit in [`MAX_FRAME`].
    TooLarge,
    /// The output buffer is smaller than the frame.
    BufferTooSmall,
}

/// Why bytes up to a delimiter are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// More than [`MAX_FRAME`] bytes before a delimiter (skipped).
    Oversize,
    /// Not valid COBS.
    Cobs,
    /// The CRC does not match (corrupted on the line).
    Crc,
    /// A valid frame whose body is not a known message.
    Message,
    /// An empty frame (two delimiters in a row).
    Empty,
}

/// Encodes `msg` as one frame (delimiter included) into `out`; returns its
/// length.
pub fn encode(msg: &Message<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut body = [0u8; MAX_BODY + 4];
    let n = postcard::to_slice(msg, &mut body[..MAX_BODY])
        .map_err(|_| EncodeError::TooLarge)?
        .len();
    let crc = CRC32.checksum(&body[..n]).to_le_bytes();
    body[n..n + 4].copy_from_slice(&crc);
    let raw = n + 4;
    if out.len() < cobs::max_encoding_length(raw) + 1 {
        return Err(EncodeError::BufferTooSmall);
    }
    let len = cobs::encode(&body[..raw], out);
    if len + 1 > MAX_FRAME {
        return Err(EncodeError::TooLarge);
    }
    out[len] = 0;
    Ok(len + 1)
}

/// Decodes the bytes of one frame (without its delimiter) in place.
pub fn decode_frame(frame: &mut [u8]) -> Result<Message<'_>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let n = cobs::decode_in_place(frame).map_err(|_| DecodeError::Cobs)?;
    if n < 5 {
        return Err(DecodeError::Crc);
    }
    let (body, crc) = frame[..n].split_at(n - 4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if CRC32.checksum(body) != want {
        return Err(DecodeError::Crc);
    }
    let (msg, rest) = postcard::take_from_bytes::<Message<'_>>(body).map_err(|_| DecodeError::Message)?;
    if !rest.is_empty() {
        return Err(DecodeError::Message);
    }
    Ok(msg)
}

/// A sans-IO frame receiver with a fixed buffer: push bytes as they arrive,
/// get messages (or errors) as frames complete.
pub struct Decoder {
    buf: [u8; MAX_FRAME],
    len: usize,
    overflow: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// An empty decoder.
    pub const fn new() -> Decoder {
        Decoder {
            buf: [0; MAX_FRAME],
            len: 0,
            overflow: false,
        }
    }

    /// Feeds one byte. At a delimiter returns the frame's outcome; a frame
    /// that was too long, corrupted or unknown is an error and the decoder
    /// carries on with the next frame.
    pub fn push(&mut self, byte: u8) -> Option<Result<Message<'_>, DecodeError>> {
        if byte != 0 {
            if self.len < MAX_FRAME {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow = true;
            }
            return None;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflow) {
            return Some(Err(DecodeError::Oversize));
        }
        Some(decode_frame(&mut self.buf[..len]))
    }
}

#[cfg(test)]
mod tests;
