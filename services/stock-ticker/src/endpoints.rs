//! `services.stocks.snapshot` and `services.stocks.symbols`, answered from
//! the stream by any instance, leader or not.

use async_nats::jetstream::stream;
use protocol::stocks::{Snapshot, Symbols, Tick};
use protocol::{ErrorCode, ServiceError, subjects};
use runtime::micro::NoInput;
use runtime::{App, ServiceBuilder};
use std::sync::Arc;

pub(crate) fn service(app: &App, stream: stream::Stream, symbols: Vec<String>) -> ServiceBuilder {
    let symbols = Arc::new(symbols);
    let for_list = symbols.clone();
    app.service(crate::VERSION, crate::DESCRIPTION)
        .endpoint("snapshot", subjects::STOCKS_SNAPSHOT, move |_: NoInput| {
            let (stream, symbols) = (stream.clone(), symbols.clone());
            async move { snapshot(&stream, &symbols).await }
        })
        .endpoint("symbols", subjects::STOCKS_SYMBOLS, move |_: NoInput| {
            let symbols = for_list.clone();
            async move {
                Ok::<_, ServiceError>(Symbols {
                    symbols: symbols.to_vec(),
                })
            }
        })
}

async fn snapshot(stream: &stream::Stream, symbols: &[String]) -> Result<Snapshot, ServiceError> {
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
