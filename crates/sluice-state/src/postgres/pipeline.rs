//! Runs many statements on one connection in a single round trip.
//!
//! tokio-postgres sends a prepared statement the first time its future is polled and the server
//! answers requests in the order they arrived. [`in_order`] polls every future once (sending them
//! all, in list order, so the server also executes them in list order), then waits for the
//! answers front to back. Statements that report failure as "no row" rather than as an error (the
//! conditional writes of [`super::sql`]) can thus be pipelined without changing their meaning.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A boxed statement future borrowing the connection.
pub(crate) type Op<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs `ops` concurrently on their shared connection and returns their outputs in list order.
pub(crate) async fn in_order<T>(mut ops: Vec<Op<'_, T>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = Vec::with_capacity(ops.len());
    outputs.resize_with(ops.len(), || None);
    let mut started = false;
    // Index of the first op not finished yet.
    let mut next = 0;
    std::future::poll_fn(|cx| {
        if !started {
            started = true;
            for (op, out) in ops.iter_mut().zip(outputs.iter_mut()) {
                if let Poll::Ready(v) = op.as_mut().poll(cx) {
                    *out = Some(v);
                }
            }
        }
        while next < ops.len() {
            if outputs[next].is_none() {
                match ops[next].as_mut().poll(cx) {
                    Poll::Ready(v) => outputs[next] = Some(v),
                    Poll::Pending => return Poll::Pending,
                }
            }
            next += 1;
        }
        Poll::Ready(())
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn starts_every_op_in_order_and_returns_outputs_in_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let ops: Vec<Op<'_, usize>> = (0..5usize)
            .map(|i| {
                let log = Arc::clone(&log);
                Box::pin(async move {
                    log.lock().expect("log").push(format!("start {i}"));
                    // Later ops finish first.
                    tokio::time::sleep(std::time::Duration::from_millis(5 * (5 - i as u64))).await;
                    i * 10
                }) as Op<'_, usize>
            })
            .collect();
        let out = in_order(ops).await;
        assert_eq!(out, vec![0, 10, 20, 30, 40]);
        let log = log.lock().expect("log").clone();
        assert_eq!(
            log,
            (0..5).map(|i| format!("start {i}")).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn nothing_in_nothing_out() {
        let out: Vec<u8> = in_order(Vec::new()).await;
        assert!(out.is_empty());
    }
}
