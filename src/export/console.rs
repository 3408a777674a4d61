//! tokio-console: console-subscriber's layer, configured from its own `TOKIO_CONSOLE_*`
//! variables (default bind 127.0.0.1:6669).

use std::net::ToSocketAddrs;

use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::ConfigError;

const BIND: &str = "TOKIO_CONSOLE_BIND";

/// console-subscriber panics on a bad `TOKIO_CONSOLE_BIND`; check it first and say why.
pub(crate) fn check_env() -> Result<(), ConfigError> {
    let Ok(bind) = std::env::var(BIND) else {
        return Ok(());
    };
    let resolves = bind
        .to_socket_addrs()
        .map(|mut addrs| addrs.next().is_some())
        .unwrap_or(false);
    if resolves {
        Ok(())
    } else {
        Err(ConfigError::new(
            BIND,
            &bind,
            "HOST:PORT that resolves, such as 127.0.0.1:6669",
        ))
    }
}

/// The console layer with its gRPC server started on its own thread, or `None` (with the reason
/// logged at start-up) when built without `--cfg tokio_unstable`, where console-subscriber
/// would panic.
pub(crate) fn layer<S>() -> Result<Option<impl Layer<S>>, ConfigError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    check_env()?;
    if !cfg!(tokio_unstable) {
        return Ok(None);
    }
    Ok(Some(
        console_subscriber::ConsoleLayer::builder()
            .with_default_env()
            .spawn::<S>(),
    ))
}
