//! Single flight: concurrent requests that need the same answer from PID 1 (the same
//! credentials to verify, the same user's fingerprint, the gate state) share one call.
//! opencode's TUI sends a burst of parallel requests with one Basic header on first
//! contact; checked one by one, each would reserve a rate-limiter attempt before PAM
//! answered, and the sixth correct request would be refused.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::watch;

/// Most keys remembered; finished flights are dropped first beyond.
const MAX_KEYS: usize = 4096;

/// Flights by key.
pub struct Flights<K, V> {
    map: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// A flight that has an answer, or whose task is gone, is over.
fn over<V>(rx: &watch::Receiver<Option<V>>) -> bool {
    rx.borrow().is_some() || rx.has_changed().is_err()
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The answer of the flight for `key`: joins the one in the air, or starts `work` in a
    /// task of its own (so a caller whose client hangs up does not cancel it for the
    /// others). `None` only if the task died without answering.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Option<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut rx = {
            let Ok(mut map) = self.map.lock() else {
                return None;
            };
            match map.get(&key) {
                Some(rx) if !over(rx) => rx.clone(),
                _ => {
                    if map.len() >= MAX_KEYS {
                        map.retain(|_, rx| !over(rx));
                    }
                    let (tx, rx) = watch::channel(None);
                    map.insert(key, rx.clone());
                    let fut = work();
                    tokio::spawn(async move {
                        let v = fut.await;
                        let _ = tx.send(Some(v));
                    });
                    rx
                }
            }
        };
        let v = rx.wait_for(Option::is_some).await.ok()?;
        v.clone()
    }

    /// Flights remembered (for tests).
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn concurrent_callers_share_one_run() {
        rt().block_on(async {
            let flights: Arc<Flights<&'static str, u32>> = Arc::default();
            let runs = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let (f, runs) = (flights.clone(), runs.clone());
                tasks.push(tokio::spawn(async move {
                    f.run("alice", || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
                }));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap(), Some(7));
            }
            assert_eq!(runs.load(Ordering::SeqCst), 1);
            // Once answered, the next call runs again (nothing is cached here).
            let again = runs.clone();
            let r = flights
                .run("alice", || async move {
                    again.fetch_add(1, Ordering::SeqCst);
                    8
                })
                .await;
            assert_eq!(r, Some(8));
            assert_eq!(runs.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn a_caller_that_goes_away_does_not_cancel_the_others() {
        rt().block_on(async {
            let flights: Arc<Flights<u8, u8>> = Arc::default();
            let f = flights.clone();
            let leader = tokio::spawn(async move {
                f.run(1, || async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    42
                })
                .await
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            let f = flights.clone();
            let follower = tokio::spawn(async move { f.run(1, || async { unreachable!() }).await });
            leader.abort();
            assert_eq!(follower.await.unwrap(), Some(42));
        });
    }

    #[test]
    fn finished_flights_do_not_pile_up() {
        rt().block_on(async {
            let flights: Flights<usize, usize> = Flights::default();
            for i in 0..(MAX_KEYS + 100) {
                assert_eq!(flights.run(i, || async move { i }).await, Some(i));
            }
            assert!(flights.len() <= MAX_KEYS);
        });
    }
}
