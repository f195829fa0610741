//! `dishsync-firmware-bridge`: the frame protocol for microcontroller scales
//! and sold-out boards.
//!
//! [`codec`] is `#![no_std]` with default features off and needs no
//! allocator: firmware depends on it directly. It owns the [`Message`]s, the
//! frame format (postcard, CRC-32, COBS, `0x00` delimiter; see
//! `firmware-bridge/PROTOCOL.md`) and a sans-IO [`Decoder`] with a fixed
//! buffer that resynchronises after garbage. [`bridge`] (feature `std`) is
//! the daemon that speaks for these devices on MQTT, and [`cli`] (feature
//! `std`) `dishsync-bridge`'s command line.

#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod bridge;
#[cfg(feature = "std")]
pub mod cli;
pub mod codec;

pub use codec::{decode_frame, encode, DecodeError, Decoder, EncodeError, Message, Status, StockKind, Unit, MAX_FRAME};
