//! The process-wide tokio runtime every call runs on, the panic guard of
//! every exported function, and timeouts.
//!
//! A C caller's thread is never a runtime thread: a call builds its future
//! and blocks on it with `Handle::block_on`, so it runs on the caller's
//! thread while the connections' reader and writer tasks run on the
//! runtime's two worker threads. Callbacks never run inside `block_on`
//! (see `state`), so a callback may call any function of the library.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ckpt_client::ClientError;
use ckpt_proto::{ErrorCode, TIME_END};

use crate::errors::Api;

/// Worker threads of the library's runtime: the connections' IO is light,
/// the callers' threads do the waiting.
const WORKER_THREADS: usize = 2;

static HANDLE: OnceLock<Result<tokio::runtime::Handle, String>> = OnceLock::new();

/// The runtime itself, taken and shut down when the process exits: its
/// threads are joined then, so a run under valgrind ends with nothing
/// "possibly lost" in their thread-local storage.
static OWNED: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);

/// How long exit waits for the runtime's threads.
const SHUTDOWN_TIMEOUT_MS: u64 = 1_000;

extern "C" fn shut_down_at_exit() {
    let owned = OWNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(runtime) = owned {
        // On a thread of its own: exit has already destroyed this thread's
        // thread-locals, and tokio needs its own to wait for its threads.
        let shutdown = std::thread::Builder::new()
            .name("ckpt-capi-exit".into())
            .spawn(move || runtime.shutdown_timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS)));
        if let Ok(shutdown) = shutdown {
            let _ = shutdown.join();
        }
    }
}

/// The runtime's handle; the runtime is built on first use.
///
/// # Errors
/// `LIBRARY` when the runtime cannot be built (no threads, no epoll).
pub fn runtime() -> Result<&'static tokio::runtime::Handle, ClientError> {
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("ckpt-capi")
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            let handle = runtime.handle().clone();
            *OWNED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(runtime);
            // SAFETY: registers a function without arguments that only
            // takes and shuts down the runtime.
            unsafe { libc::atexit(shut_down_at_exit) };
            Ok(handle)
        })
        .as_ref()
        .map_err(|error| {
            ClientError::new(
                ErrorCode::Library,
                format!("cannot start the library's runtime: {error}"),
            )
        })
}

/// Runs `future` to completion on the caller's thread.
///
/// # Errors
/// `LIBRARY` when the runtime cannot be built. Called from inside a
/// runtime (nothing of the library does that) tokio panics, and [`guard`]
/// turns that into `LIBRARY`.
pub fn block_on<T>(future: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    runtime()?.block_on(future)
}

/// Calls `body`, turning a panic into `LIBRARY` so that no unwinding ever
/// crosses into C. Objects of the client are dropped inside the runtime's
/// context (some of their destructors talk to tasks).
pub fn guard(api: Api, body: impl FnOnce() -> u32) -> u32 {
    let entered = runtime().map(|runtime| runtime.enter());
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => {
            drop(entered);
            code
        }
        Err(_) => api.error(ErrorCode::Library),
    }
}

/// The limit a `ClTimeT`/`SaTimeT` timeout argument sets, `None` for none.
///
/// OpenClovis: 0 and negative values mean "no limit" (SAFplus ignored the
/// argument and its applications pass 0 or `(ClTimeT)-1` for "forever"),
/// as does `CL_TIME_END`. SA Forum: a negative value is `INVALID_PARAM`,
/// 0 expires at once, `SA_TIME_END` is no limit.
///
/// # Errors
/// `INVALID_PARAMETER` for a negative SA Forum timeout.
pub fn limit(api: Api, timeout_ns: i64) -> Result<Option<Duration>, ClientError> {
    if timeout_ns == TIME_END {
        return Ok(None);
    }
    match api {
        Api::Cl if timeout_ns <= 0 => Ok(None),
        Api::Sa if timeout_ns < 0 => Err(ClientError::new(
            ErrorCode::InvalidParameter,
            format!("timeout {timeout_ns} is negative"),
        )),
        _ => Ok(Some(Duration::from_nanos(timeout_ns.unsigned_abs()))),
    }
}

/// Runs `future` within `limit`.
///
/// # Errors
/// `TIMEOUT` when the limit passes first (a zero limit fails before the
/// request is sent); the future's error otherwise.
pub async fn within<T>(
    limit: Option<Duration>,
    future: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match limit {
        None => future.await,
        Some(limit) if limit.is_zero() => Err(ClientError::new(
            ErrorCode::Timeout,
            "the timeout is 0: nothing was sent",
        )),
        Some(limit) => match tokio::time::timeout(limit, future).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::new(
                ErrorCode::Timeout,
                format!("no answer within the timeout of {} ns", limit.as_nanos()),
            )),
        },
    }
}
