//! A POS terminal that keeps a local map of which dishes it may sell, in
//! sync with the broker, and records a sale of every dish that is available.
//!
//! ```sh
//! cargo run -p dishsync-broker                         # the demo chain
//! cargo run -p dishsync-client --example pos -- 127.0.0.1:1883 downtown pos-7
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use dishsync_client::protocol::payload::DishStatus;
use dishsync_client::protocol::DishId;
use dishsync_client::{Client, ClientConfig, Update, Watch};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let broker = args.next().unwrap_or_else(|| "127.0.0.1:1883".into());
    let store = args.next().unwrap_or_else(|| "downtown".into());
    let device = args.next().unwrap_or_else(|| "pos-example".into());
    let (host, port) = broker.rsplit_once(':').ok_or("broker must be host:port")?;

    let mut config = ClientConfig::new(
        host,
        port.parse()?,
        store.parse()?,
        device.parse()?,
        std::env::temp_dir().join(format!("dishsync-pos-{device}")),
    );
    // The whole menu at once on connect, then every change per dish.
    config.watch = vec![Watch::Menu, Watch::Availability];
    let (client, mut updates) = Client::start(config)?;

    // What this terminal may sell right now: dish → portions left.
    let mut sellable: BTreeMap<DishId, u64> = BTreeMap::new();
    let mut sold_one = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(update)) = tokio::time::timeout_at(deadline, updates.recv()).await {
        match update {
            Update::Menu(menu) => {
                for (dish, entry) in menu.dishes {
                    set(&mut sellable, dish, entry.status, entry.portions);
                }
            }
            Update::Availability(a) => set(&mut sellable, a.dish, a.status, a.portions),
            Update::Acked(ids) => println!("sale committed: {ids:?}"),
            Update::Rejected(err) => println!("sale refused: {} ({:?})", err.error, err.code),
            Update::Connected(up) => println!("connected: {up}"),
            _ => {}
        }
        if !sold_one {
            if let Some(dish) = sellable.keys().next().cloned() {
                let id = client.record_sale(&[(dish.clone(), 1)])?;
                println!("sold one {dish} as {id}");
                sold_one = true;
            }
        }
        println!("{} dishes sellable", sellable.len());
    }
    let left = client.shutdown(Duration::from_secs(5)).await;
    println!("stopped; {left} message(s) still in the outbox");
    Ok(())
}

fn set(sellable: &mut BTreeMap<DishId, u64>, dish: DishId, status: DishStatus, portions: u64) {
    if status == DishStatus::SoldOut {
        sellable.remove(&dish);
    } else {
        sellable.insert(dish, portions);
    }
}
