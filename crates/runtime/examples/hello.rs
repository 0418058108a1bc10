//! A whole service on the shared lifecycle (docs/WRITE_A_SERVICE.md):
//! `cargo run -p switchyard-runtime --example hello`, then
//! `nats req services.hello.greet '{"name":"Ada"}'`.

use protocol::ServiceError;
use runtime::{App, CancellationToken, Settings};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Greet {
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct Greeting {
    pub message: String,
}

/// What every handler shares, as an `Arc`.
#[derive(Debug)]
pub struct Hello {
    pub salutation: String,
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = App::connect("hello", settings, shutdown).await?;
    let state = Arc::new(Hello {
        salutation: "Hello".into(),
    });
    app.service("0.1.0", "Says hello")
        .with_state(state)
        .endpoint("greet", "services.hello.greet", greet)
        .serve()
        .await
}

async fn greet(hello: Arc<Hello>, req: Greet) -> Result<Greeting, ServiceError> {
    match req.name.trim() {
        "" => Err(ServiceError::invalid_request("name must not be empty")),
        name => Ok(Greeting {
            message: format!("{}, {name}!", hello.salutation),
        }),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::main("hello", run).await
}
