//! End-to-end scenarios: the real `dishsync-broker` as a child process on a
//! free loopback port, real MQTT clients (rumqttc, and mosquitto's clients
//! where installed). One test binary for the whole system, so the broker is
//! built once.

mod support;

mod api;
mod availability;
mod bad_input;
mod bench;
mod bridge;
mod client;
mod cluster;
mod demo;
mod durability;
mod interop;
mod mqtt5;
mod namespaces;
mod people;
mod planning;
mod reload;
mod security;
mod web;
mod webdriver;
mod webhooks;
mod worker;
