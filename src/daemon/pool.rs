//! The daemon's blocking pool: where store and record work runs, so that it never blocks
//! the network event loop or the async threads that serve requests.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Store work running at once; more waits its turn. A school server has few cores, and
/// the store's own work (hashing, disk) gains nothing from more threads than this.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// A bounded front to tokio's blocking threads: at most `size` jobs run at a time, the
/// rest wait (asynchronously) for a place.
#[derive(Clone)]
pub struct BlockingPool {
    places: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
#[error("the daemon is shutting down")]
pub struct PoolClosed;

impl BlockingPool {
    pub fn new(size: usize) -> BlockingPool {
        BlockingPool {
            places: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    /// Runs `job` on a blocking thread once a place is free, and waits for its result.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolClosed>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolClosed)?;
        tokio::task::spawn_blocking(move || {
            let _place = place;
            job()
        })
        .await
        .map_err(|_| PoolClosed)
    }

    /// Starts `job` once a place is free, without waiting for it: for work that streams
    /// its results through a channel.
    pub fn spawn<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let places = self.places.clone();
        tokio::spawn(async move {
            let Ok(place) = places.acquire_owned().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                let _place = place;
                job()
            })
            .await;
        });
    }
}
