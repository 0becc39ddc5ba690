//! Reads kept for a moment: rows that nearly every request of a kind asks for (the partner
//! behind a host, a merchant's Alipay app, a partner's first domain) served from memory for up
//! to `database.recent_reads_ms` instead of a round trip to the database each time.
//!
//! Invariant: a value served is never older than that window, and a change this process makes
//! is seen at once: its writer calls [`Recent::forget`], and a read that began before the
//! forget is not kept after it. Another engine process sees the change within the window.
//! Only rows found are kept — an unknown key is asked again every time, so something created
//! is seen at once — and the map starts over past its size limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small map of recent reads; clones share it.
pub struct Recent<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Recent<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Recent<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    ttl: Duration,
    max_entries: usize,
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    /// Counts forgets: a read that started under another generation is not kept.
    generation: u64,
    entries: HashMap<K, (Instant, V)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Recent<K, V> {
    /// Keeps up to `max_entries` values for `ttl` each; a zero `ttl` keeps nothing.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                ttl,
                max_entries: max_entries.max(1),
                state: Mutex::new(State {
                    generation: 0,
                    entries: HashMap::new(),
                }),
            }),
        }
    }

    /// The value for `key`: from memory when read within the window, else from `load`, kept
    /// when found.
    pub async fn get_or_load<E>(
        &self,
        key: &K,
        load: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, E> {
        if self.inner.ttl.is_zero() {
            return load.await;
        }
        let started = {
            let Ok(state) = self.inner.state.lock() else {
                return load.await;
            };
            if let Some((at, value)) = state.entries.get(key)
                && at.elapsed() < self.inner.ttl
            {
                return Ok(Some(value.clone()));
            }
            state.generation
        };
        let read_at = Instant::now();
        let value = load.await?;
        if let (Some(value), Ok(mut state)) = (&value, self.inner.state.lock())
            && state.generation == started
        {
            if state.entries.len() >= self.inner.max_entries {
                state.entries.clear();
            }
            state.entries.insert(key.clone(), (read_at, value.clone()));
        }
        Ok(value)
    }

    /// Drops `key`, and any read of it under way, after a change this process made.
    pub fn forget(&self, key: &K) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.generation += 1;
            state.entries.remove(key);
        }
    }

    /// Drops everything, and every read under way.
    pub fn forget_all(&self) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.generation += 1;
            state.entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(recent: &Recent<&'static str, u32>, value: Option<u32>) -> Option<u32> {
        recent
            .get_or_load(&"k", async { Ok::<_, ()>(value) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_value_read_within_the_window_is_served_without_asking_again() {
        let recent = Recent::new(Duration::from_secs(60), 8);
        assert_eq!(read(&recent, Some(1)).await, Some(1));
        assert_eq!(read(&recent, Some(2)).await, Some(1));
        recent.forget(&"k");
        assert_eq!(read(&recent, Some(3)).await, Some(3));
    }

    #[tokio::test]
    async fn an_unknown_key_is_asked_again_every_time() {
        let recent = Recent::new(Duration::from_secs(60), 8);
        assert_eq!(read(&recent, None).await, None);
        assert_eq!(read(&recent, Some(5)).await, Some(5));
    }

    #[tokio::test]
    async fn a_zero_window_keeps_nothing_and_an_expired_value_is_read_again() {
        let off = Recent::new(Duration::ZERO, 8);
        assert_eq!(read(&off, Some(1)).await, Some(1));
        assert_eq!(read(&off, Some(2)).await, Some(2));
        let short = Recent::new(Duration::from_millis(20), 8);
        assert_eq!(read(&short, Some(1)).await, Some(1));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(read(&short, Some(2)).await, Some(2));
    }

    #[tokio::test]
    async fn a_read_that_began_before_a_change_is_not_kept_after_it() {
        let recent: Recent<&'static str, u32> = Recent::new(Duration::from_secs(60), 8);
        let stale = recent
            .get_or_load(&"k", async {
                // The change lands while this read is under way.
                recent.forget(&"k");
                Ok::<_, ()>(Some(1))
            })
            .await
            .unwrap();
        assert_eq!(stale, Some(1));
        assert_eq!(read(&recent, Some(2)).await, Some(2));
    }

    #[tokio::test]
    async fn the_map_starts_over_past_its_limit() {
        let recent: Recent<u32, u32> = Recent::new(Duration::from_secs(60), 2);
        for key in 0..3 {
            recent
                .get_or_load(&key, async { Ok::<_, ()>(Some(key)) })
                .await
                .unwrap();
        }
        let again = recent
            .get_or_load(&0, async { Ok::<_, ()>(Some(100)) })
            .await
            .unwrap();
        assert_eq!(again, Some(100), "the first key was dropped with the rest");
    }
}
