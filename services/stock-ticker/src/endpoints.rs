//! `services.stocks.snapshot` and `services.stocks.symbols`, answered from
//! the stream by any instance, leader or not.

use crate::leader::Ticker;
use async_nats::jetstream::stream;
use protocol::stocks::{Snapshot, Symbols, Tick};
use protocol::{ErrorCode, ServiceError, subjects};
use runtime::micro::NoInput;
use std::sync::Arc;

pub(crate) async fn symbols(ticker: Arc<Ticker>, _: NoInput) -> Result<Symbols, ServiceError> {
    Ok(Symbols {
        symbols: ticker.settings.symbols.clone(),
    })
}

pub(crate) async fn snapshot(ticker: Arc<Ticker>, _: NoInput) -> Result<Snapshot, ServiceError> {
    read_snapshot(&ticker.stream, &ticker.settings.symbols).await
}

async fn read_snapshot(
    stream: &stream::Stream,
    symbols: &[String],
) -> Result<Snapshot, ServiceError> {
    let mut out = Snapshot::default();
    for symbol in symbols {
        let subject = subjects::stock(symbol).map_err(|e| ServiceError::internal(e.to_string()))?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                if let Ok(tick) = serde_json::from_slice::<Tick>(&message.payload) {
                    out.prices.insert(symbol.clone(), tick);
                }
            }
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(err) => {
                return Err(ServiceError::new(
                    ErrorCode::Unavailable,
                    format!("reading STOCKS: {err}"),
                ));
            }
        }
    }
    Ok(out)
}
