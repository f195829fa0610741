//! Work shared between the machine's two cores: the start-up's large
//! passes (reading every store's documents, rendering and storing every
//! retained one), which are linear in a chain's documents and independent
//! from one document to the next.

/// `work` over `first` on this thread and over `second` on another, the
/// two results in that order. A panic on the other thread goes on here.
pub fn on_two_threads<I, T, W>(first: I, second: I, work: W) -> (T, T)
where
    I: Send,
    T: Send,
    W: Fn(I) -> T + Sync,
{
    std::thread::scope(|threads| {
        let later = threads.spawn(|| work(second));
        let here = work(first);
        match later.join() {
            Ok(there) => (here, there),
            Err(panicked) => std::panic::resume_unwind(panicked),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::on_two_threads;

    #[test]
    fn both_halves_come_back_in_order() {
        let (a, b) = on_two_threads(vec![1, 2], vec![3], |v: Vec<i32>| {
            v.iter().map(|x| x * 10).collect::<Vec<_>>()
        });
        assert_eq!((a, b), (vec![10, 20], vec![30]));
    }

    #[test]
    #[should_panic(expected = "the other half")]
    fn a_panic_on_the_other_thread_is_not_lost() {
        on_two_threads(false, true, |other| {
            assert!(!other, "the other half");
        });
    }
}
