//! The client inputs the library accepts, in one place: each test or bench that runs "once per input"
//! takes them from here, names them with [`Input::name`], and connects them with [`Input::connect`].
//!
//! An input is a client shape the adapters accept (a fred `Client` or `Pool`, a deadpool-redis `Pool`,
//! a redis-rs `MultiplexedConnection`), or the in-memory backend. [`Input::client`] gives the client
//! itself, for what a lock backend does not cover: the benches' raw commands, and the adapter tests
//! that need the adapter's concrete type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redlease::LockBackend;
use redlease::deadpool::deadpool_redis::redis::AsyncConnectionConfig;
use redlease::deadpool::deadpool_redis::redis::aio::MultiplexedConnection;
use redlease::deadpool::{DeadpoolBackend, deadpool_redis};
use redlease::fred::FredBackend;
use redlease::fred::fred::clients::{Client as FredClient, Pool as FredPool};
use redlease::fred::fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
use redlease::memory::MemoryBackend;

/// One way to hand the library a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A fred `Client`: one connection.
    FredClient,
    /// A fred `Pool` of [`Options::fred_pool_size`] clients.
    FredPool,
    /// A deadpool-redis `Pool` (redis-rs connections, checked out per call).
    DeadpoolPool,
    /// A single redis-rs `MultiplexedConnection`, through the deadpool adapter.
    RedisConnection,
    /// The in-memory backend: no server. It ignores the URL, and each connect is a store of its own.
    Memory,
}

impl Input {
    /// Every input that talks to a Redis server.
    pub const REDIS: [Input; 4] = [
        Input::FredClient,
        Input::FredPool,
        Input::DeadpoolPool,
        Input::RedisConnection,
    ];

    /// Every input, the in-memory backend last.
    pub const ALL: [Input; 5] = [
        Input::FredClient,
        Input::FredPool,
        Input::DeadpoolPool,
        Input::RedisConnection,
        Input::Memory,
    ];

    /// A stable lowercase name for test output and benchmark ids (which compare across runs: do not
    /// change them).
    pub fn name(self) -> &'static str {
        match self {
            Input::FredClient => "fred-client",
            Input::FredPool => "fred-pool",
            Input::DeadpoolPool => "deadpool-pool",
            Input::RedisConnection => "redis-connection",
            Input::Memory => "memory",
        }
    }

    /// The input [`name`](Self::name) names, if any.
    pub fn from_name(name: &str) -> Option<Input> {
        Input::ALL.into_iter().find(|input| input.name() == name)
    }

    /// The client itself, connected to `url` (fred clients and pools are initialised; a deadpool pool
    /// connects on first use).
    ///
    /// Panics when it cannot connect: a test without its server has nothing to test.
    pub async fn client(self, url: &str, options: &Options) -> RawClient {
        let redis_rs = match options.redis_rs {
            RedisRsTimeouts::Default => AsyncConnectionConfig::new(),
            RedisRsTimeouts::Off => AsyncConnectionConfig::new()
                .set_response_timeout(None)
                .set_connection_timeout(None),
        };
        match self {
            Input::FredClient => {
                let client = options.fred_builder(url).build().expect("fred client");
                client.init().await.expect("fred client connects");
                RawClient::Fred(client)
            }
            Input::FredPool => {
                let pool = options
                    .fred_builder(url)
                    .build_pool(options.fred_pool_size)
                    .expect("fred pool");
                pool.init().await.expect("fred pool connects");
                RawClient::FredPool(pool)
            }
            Input::DeadpoolPool => RawClient::Deadpool(match options.redis_rs {
                RedisRsTimeouts::Default => deadpool_redis::Config::from_url(url)
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .expect("deadpool pool"),
                RedisRsTimeouts::Off => {
                    let manager = deadpool_redis::Manager::new_with_config(url, redis_rs)
                        .expect("deadpool manager");
                    deadpool_redis::Pool::builder(manager)
                        .build()
                        .expect("deadpool pool")
                }
            }),
            Input::RedisConnection => RawClient::Redis(
                deadpool_redis::redis::Client::open(url)
                    .expect("redis-rs client")
                    .get_multiplexed_async_connection_with_config(&redis_rs)
                    .await
                    .expect("redis-rs connects"),
            ),
            Input::Memory => RawClient::Memory(MemoryBackend::new()),
        }
    }

    /// A lock backend over a new client of this input, connected to `url`.
    pub async fn connect(self, url: &str, options: Options) -> Arc<dyn LockBackend> {
        self.client(url, &options).await.backend(options.call_bound)
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the redis-rs inputs (deadpool pool, multiplexed connection) keep of redis-rs's own timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRsTimeouts {
    /// redis-rs's defaults: a 500 ms response timeout and a 1 s connection timeout.
    Default,
    /// None: a hung call takes exactly the adapter's bound, whichever input it goes through.
    Off,
}

/// How [`Input::client`] and [`Input::connect`] set a client up; the default is each client's own
/// defaults and the adapter's default bound on a call. Each setting applies to the inputs it names and
/// is ignored by the others.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    call_bound: Option<Duration>,
    redis_rs: RedisRsTimeouts,
    fred_pool_size: usize,
    fred_reconnect: Option<Duration>,
    fred_connect_bound: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            call_bound: None,
            redis_rs: RedisRsTimeouts::Default,
            fred_pool_size: 2,
            fred_reconnect: None,
            fred_connect_bound: None,
        }
    }
}

impl Options {
    /// The defaults.
    pub fn new() -> Options {
        Options::default()
    }

    /// The adapter's bound on every call (its `command_timeout`); unset, the adapter's default.
    pub fn call_bound(mut self, bound: Duration) -> Options {
        self.call_bound = Some(bound);
        self
    }

    /// redis-rs inputs: keep redis-rs's own timeouts, or turn them off.
    pub fn redis_rs_timeouts(mut self, timeouts: RedisRsTimeouts) -> Options {
        self.redis_rs = timeouts;
        self
    }

    /// [`Input::FredPool`]: how many clients the pool holds (2 unless set).
    pub fn fred_pool_size(mut self, size: usize) -> Options {
        self.fred_pool_size = size;
        self
    }

    /// fred inputs: reconnect after a lost connection every `every`, forever. Without it a fred client
    /// never reconnects.
    pub fn fred_reconnect(mut self, every: Duration) -> Options {
        self.fred_reconnect = Some(every);
        self
    }

    /// fred inputs: the bound on connecting and on fred's internal commands (fred's default is 10 s).
    pub fn fred_connect_bound(mut self, bound: Duration) -> Options {
        self.fred_connect_bound = Some(bound);
        self
    }

    fn fred_builder(&self, url: &str) -> Builder {
        let mut builder = Builder::from_config(Config::from_url(url).expect("redis url"));
        if let Some(every) = self.fred_reconnect {
            let millis = u32::try_from(every.as_millis()).expect("reconnect interval in u32 ms");
            builder.set_policy(ReconnectPolicy::new_constant(0, millis));
        }
        if let Some(bound) = self.fred_connect_bound {
            builder.with_connection_config(|config| {
                config.connection_timeout = bound;
                config.internal_command_timeout = bound;
            });
        }
        builder
    }
}

/// The client an [`Input`] connects, before an adapter wraps it.
pub enum RawClient {
    /// [`Input::FredClient`].
    Fred(FredClient),
    /// [`Input::FredPool`].
    FredPool(FredPool),
    /// [`Input::DeadpoolPool`].
    Deadpool(deadpool_redis::Pool),
    /// [`Input::RedisConnection`].
    Redis(MultiplexedConnection),
    /// [`Input::Memory`].
    Memory(MemoryBackend),
}

impl RawClient {
    /// The fred adapter over this client, for the fred inputs.
    pub fn fred(&self) -> Option<FredBackend> {
        match self {
            RawClient::Fred(client) => Some(FredBackend::from(client.clone())),
            RawClient::FredPool(pool) => Some(FredBackend::from(pool.clone())),
            _ => None,
        }
    }

    /// The deadpool adapter over this client, for the redis-rs inputs.
    pub fn deadpool(&self) -> Option<DeadpoolBackend> {
        match self {
            RawClient::Deadpool(pool) => Some(DeadpoolBackend::from(pool.clone())),
            RawClient::Redis(connection) => Some(DeadpoolBackend::from(connection.clone())),
            _ => None,
        }
    }

    /// A lock backend over this client (clones share the client's connections), with the adapter's
    /// bound on every call set to `call_bound` when given. The in-memory backend has no calls to bound.
    pub fn backend(&self, call_bound: Option<Duration>) -> Arc<dyn LockBackend> {
        let fred = |backend: FredBackend| -> Arc<dyn LockBackend> {
            Arc::new(match call_bound {
                Some(bound) => backend.command_timeout(bound),
                None => backend,
            })
        };
        let deadpool = |backend: DeadpoolBackend| -> Arc<dyn LockBackend> {
            Arc::new(match call_bound {
                Some(bound) => backend.command_timeout(bound),
                None => backend,
            })
        };
        match self {
            RawClient::Fred(client) => fred(FredBackend::from(client.clone())),
            RawClient::FredPool(pool) => fred(FredBackend::from(pool.clone())),
            RawClient::Deadpool(pool) => deadpool(DeadpoolBackend::from(pool.clone())),
            RawClient::Redis(connection) => deadpool(DeadpoolBackend::from(connection.clone())),
            RawClient::Memory(memory) => Arc::new(memory.clone()),
        }
    }
}
