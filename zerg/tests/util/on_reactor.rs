//! Runs test tasks on a reactor thread: a serve-mode engine whose handlers take the next queued
//! task, so a test can call what only works there (`zerg_uring::connect`, `adopt`).
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use zerg_uring::{Connection, Engine};

/// How long a test waits for a task or a condition.
pub const WAIT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce(Connection) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A serve-mode engine that runs test tasks on its reactor threads: each task is the handler of
/// one trigger connection the test opens (and gets that connection).
pub struct OnReactor {
    engine: Option<Engine>,
    jobs: Arc<Mutex<VecDeque<Job>>>,
}

impl OnReactor {
    pub fn start(reactors: usize) -> OnReactor {
        Self::with_options(crate::util::options(reactors, false))
    }

    pub fn with_options(options: zerg_uring::EngineOptions) -> OnReactor {
        let jobs: Arc<Mutex<VecDeque<Job>>> = Arc::default();
        let j = jobs.clone();
        let engine = Engine::serve(options, move |conn: Connection| {
            let job = j.lock().unwrap().pop_front();
            async move {
                if let Some(job) = job {
                    job(conn).await;
                }
            }
        })
        .expect("engine starts");
        OnReactor {
            engine: Some(engine),
            jobs,
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine.as_ref().unwrap()
    }

    /// Starts `f` on a reactor; its output arrives on the returned channel. The trigger
    /// connection's client end is returned too (keep it open while the task runs).
    pub fn spawn<T, F, Fut>(&self, f: F) -> (mpsc::Receiver<T>, TcpStream)
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.jobs.lock().unwrap().push_back(Box::new(move |conn| {
            Box::pin(async move {
                let _ = tx.send(f(conn).await);
            })
        }));
        let client = TcpStream::connect(self.engine().local_addr()).unwrap();
        (rx, client)
    }

    /// Runs `f` on a reactor and returns its output.
    pub fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Connection) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (rx, _client) = self.spawn(f);
        rx.recv_timeout(WAIT)
            .expect("the task on the reactor finished")
    }

    pub fn live_connections(&self) -> u64 {
        self.engine().stats().total().connections
    }

    pub fn stop(mut self) {
        let engine = self.engine.take().unwrap();
        engine.stop();
        engine.join().expect("engine ran without failure");
    }
}
