//! The data-parallel world of `hyena train` and `hyena finetune` when an MPI launcher started
//! the process (`mpirun -np N hyena train …`, `srun`): MPI's world with the `mpi` feature;
//! without it, a clear error instead of N processes each training alone into one directory.

use anyhow::Result;
use hyena::train::dist::Comm;

/// Environment variables that MPI launchers set for the processes they start, with the
/// world size where the variable holds it.
#[cfg(not(feature = "mpi"))]
const LAUNCHER_SIZE: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];

/// The ranks of this run: `None` for a plain single process.
pub fn world() -> Result<Option<Box<dyn Comm>>> {
    #[cfg(feature = "mpi")]
    {
        Ok(hyena::train::dist::MpiComm::from_env()?.map(|c| Box::new(c) as Box<dyn Comm>))
    }
    #[cfg(not(feature = "mpi"))]
    {
        for v in LAUNCHER_SIZE {
            if let Some(n) = std::env::var(v).ok().and_then(|s| s.parse::<usize>().ok()) {
                if n > 1 {
                    anyhow::bail!(
                        "started by an MPI launcher as one of {n} processes ({v}), but this hyena \
                         was built without MPI: build it with `cargo build --release -p \
                         hyena-cli --features mpi` (needs Open MPI's development files and \
                         clang), or run one process without mpirun"
                    );
                }
            }
        }
        Ok(None)
    }
}

/// Whether this process prints: rank 0, or the only process.
pub fn is_rank0(comm: &Option<Box<dyn Comm>>) -> bool {
    comm.as_ref().is_none_or(|c| c.rank() == 0)
}
