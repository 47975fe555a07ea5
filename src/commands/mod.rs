//! The `weir` subcommands.

pub mod bench;
pub mod bench_io;
pub mod generate;
#[cfg(feature = "kafka")]
pub mod produce;
pub mod run;
pub mod validate;

/// Pins the calling thread, and the threads and processes it starts afterwards, to `cpu`
/// (benchmarks on one core).
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    anyhow::ensure!(
        rc == 0,
        "cannot pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
