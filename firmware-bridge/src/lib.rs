//! `dishsync-firmware-bridge`: the frame protocol for microcontroller scales
//! and sold-out boards.
//!
//! [`codec`] is `#![no_std]` with default features off and needs no
//! allocator: firmware depends on it directly. It owns the [`Message`]s, the
//! frame format (postcard, CRC-32, COBS, `0x00` delimiter; see
//! `firmware-bridge/PROTOCOL.md`) and a sans-IO [`Decoder`] with a fixed
//! buffer that resynchronises after garbage. The bridge daemon that speaks
//! for these devices on MQTT is built on the `std` feature.

#![cfg_attr(not(feature = "std"), no_std)]

pub mod codec;

pub use codec::{decode_frame, encode, DecodeError, Decoder, EncodeError, Message, Status, StockKind, Unit, MAX_FRAME};
