//! The Lua scripts, one `.lua` file per atomic operation, each headed by its
//! KEYS, ARGV and return value. Scripts never read the clock (callers pass
//! `now`) and every loop is bounded by an argument.
//!
//! They run by EVALSHA; after a Redis restart the script cache is empty and
//! redis-rs loads the script and runs it again (NOSCRIPT means it did not run).

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`lua/", $file, "`")]
        pub(crate) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("lua/", $file))));
    };
    // A script that reads list items, after the functions of `stand_in.lua`.
    ($name:ident, $file:literal, stand_in) => {
        #[doc = concat!("`lua/", $file, "`, after `lua/stand_in.lua`")]
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/stand_in.lua"),
                include_str!(concat!("lua/", $file))
            ))
        });
    };
}

script!(TAKE, "take.lua", stand_in);
script!(SHRINK, "shrink.lua", stand_in);
script!(VIEW, "view.lua");
script!(REMOVE_AT, "remove_at.lua");
script!(FINISH, "finish.lua");
script!(PUBLISH_IF_HEARD, "publish_if_heard.lua");
script!(RECOVER, "recover.lua");
script!(PROMOTE, "promote.lua");
script!(ENQUEUE_UNIQUE, "enqueue_unique.lua");
script!(DEAD_RETRY, "dead_retry.lua");
script!(RATELIMIT, "ratelimit.lua");
script!(TICK, "tick.lua");
script!(CANCEL, "cancel.lua");
script!(RUN_NOW, "run_now.lua");
