//! Your own handlers in Rust: the whole `conveyor` command line, with two
//! more job kinds.
//!
//! ```text
//! cargo run --example custom_handler -- run --config my.toml
//! cargo run --example custom_handler -- enqueue images '{"width": 640}'
//! ```
//!
//! with, in `my.toml`:
//!
//! ```toml
//! [queues.images]
//! handler = "resize"
//!
//! [queues.greetings]
//! handler = "greet"
//! track = true                  # keep each job's result in its status record
//! [queues.greetings.greet]      # the greet handler's own options
//! greeting = "Bonjour"
//! ```

use std::sync::Arc;

use conveyor::handlers::HandlerContext;
use conveyor::{Handler, HandlerError, Job, Registry, async_trait};

/// The handler of the library's documentation: no options.
struct Resize;

#[async_trait]
impl Handler for Resize {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let p: serde_json::Value = job.payload_as()?; // malformed: permanent
        if p.get("width").is_none() {
            return Err(HandlerError::permanent("missing width"));
        }
        Ok(())
    }
}

/// A handler with options of its own, read from `[queues.<q>.greet]`, that
/// keeps a result.
struct Greet {
    greeting: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GreetOptions {
    #[serde(default = "hello")]
    greeting: String,
}

fn hello() -> String {
    "Hello".into()
}

#[derive(serde::Deserialize)]
struct Person {
    name: String,
}

#[async_trait]
impl Handler for Greet {
    async fn handle(&self, job: &Job) -> Result<(), HandlerError> {
        let person: Person = job.payload_as()?;
        if person.name.is_empty() {
            // Not the payload's fault, say: ask for another try in a minute.
            return Err(
                HandlerError::transient("no name yet").retry_in(std::time::Duration::from_secs(60))
            );
        }
        job.set_result(&serde_json::json!({
            "message": format!("{}, {}!", self.greeting, person.name),
            "attempt": job.attempt(),
        }))
    }
}

fn main() -> std::process::ExitCode {
    let mut registry = Registry::builtin();
    registry.register_handler("resize", Resize);
    registry.register("greet", |ctx: &HandlerContext<'_>| {
        let options: GreetOptions = ctx.options()?;
        Ok(Arc::new(Greet {
            greeting: options.greeting,
        }))
    });
    conveyor::main_with(registry)
}
