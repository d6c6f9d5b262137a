//! Data-parallel training across processes: the few collective operations it needs, behind a
//! [`Comm`] trait (MPI with the `mpi` feature, [`MpiComm`]; threads in tests, [`LocalComm`]).
//!
//! Each rank takes a deterministic slice of every step's global batch (the rows
//! [`crate::models::parallel::shard_ranges`] gives rank `r` of `R`: the same slices the thread
//! shards of one process take), computes its gradient into the run's flat gradient buffer, and
//! the ranks sum the buffers with one all-reduce per step ([`all_reduce_sum`]). The sum is a
//! ring reduce-scatter then all-gather (Patarasuk & Yuan 2009; the pattern of Horovod and NCCL)
//! written over point-to-point exchanges, so the order of every addition is fixed by the rank
//! count alone: results never depend on timing, and every rank ends with the same bits. Each
//! rank sends and receives `2·(R−1)/R` of the buffer per step, independent of `R`.
//!
//! Errors: every rank calls the same collectives at the same points; where a rank can fail on
//! its own (reading data, a checkpoint write on rank 0, its slice's forward) the ranks first
//! [`agree`]: if any failed, all return the same [`Error::Rank`] with the first failing
//! rank's message, instead of the others waiting forever in the next collective.

use crate::error::{Error, Result};
use crate::models::parallel::shard_ranges;
use crate::ops::loss::LossSum;

/// The transport between the ranks of a data-parallel run.
pub trait Comm {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Send `send` to rank `to` while receiving `recv.len()` values from rank `from` (both
    /// sides post theirs together, so a ring of exchanges cannot deadlock).
    fn exchange(&mut self, send: &[f32], to: usize, recv: &mut [f32], from: usize) -> Result<()>;
    /// Every rank's bytes, in rank order (small messages: status, loss sums).
    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// The transport in words, for the run's log.
    fn describe(&self) -> String;
}

/// Sum `buf` over all ranks in place (every rank ends with the same bits), through the ring:
/// reduce-scatter in `R − 1` exchanges, then all-gather in `R − 1`. Segment `k` is summed in
/// the fixed order `g_k + g_{k+1} + … + g_{k−1}` (ranks mod `R`). `scratch` is reused.
pub fn all_reduce_sum(comm: &mut dyn Comm, buf: &mut [f32], scratch: &mut Vec<f32>) -> Result<()> {
    let (r, n) = (comm.rank(), comm.size());
    if n <= 1 {
        return Ok(());
    }
    let seg = shard_ranges(buf.len(), n);
    let range = |k: usize| seg[k].0..seg[k].0 + seg[k].1;
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    scratch.resize(seg.iter().map(|s| s.1).max().unwrap_or(0), 0.0);
    // Reduce-scatter: at step s, send segment r − s, receive segment r − s − 1 and add ours.
    for s in 0..n - 1 {
        let send_k = (r + n - s) % n;
        let recv_k = (r + 2 * n - s - 1) % n;
        let recv = &mut scratch[..seg[recv_k].1];
        comm.exchange(&buf[range(send_k)], next, recv, prev)?;
        // (partial sum so far) + (ours): IEEE addition is commutative, so only which values
        // are added together, not the operand order, decides the bits.
        for (a, &b) in buf[range(recv_k)].iter_mut().zip(recv.iter()) {
            *a += b;
        }
    }
    // Rank r now holds the full sum of segment r + 1; pass the sums around.
    for s in 0..n - 1 {
        let send_k = (r + 1 + n - s) % n;
        let recv_k = (r + n - s) % n;
        let recv = &mut scratch[..seg[recv_k].1];
        comm.exchange(&buf[range(send_k)], next, recv, prev)?;
        buf[range(recv_k)].copy_from_slice(recv);
    }
    Ok(())
}

/// Make every rank's outcome everyone's: `Ok` everywhere if every rank's `local` is `Ok`,
/// else, on every rank, [`Error::Rank`] with the lowest failing rank's message.
pub fn agree<T>(comm: &mut dyn Comm, local: Result<T>) -> Result<T> {
    let mine = match &local {
        Ok(_) => vec![0u8],
        Err(e) => {
            let mut v = vec![1u8];
            v.extend_from_slice(e.to_string().as_bytes());
            v
        }
    };
    let all = comm.all_gather(&mine)?;
    if let Some((rank, msg)) = all.iter().enumerate().find(|(_, b)| b.first() != Some(&0)) {
        return Err(Error::Rank {
            rank,
            ranks: all.len(),
            msg: String::from_utf8_lossy(msg.get(1..).unwrap_or_default()).into_owned(),
        });
    }
    local
}

/// Every rank's loss sums (one per micro-batch), in rank order.
pub fn gather_loss_sums(comm: &mut dyn Comm, mine: &[LossSum]) -> Result<Vec<Vec<LossSum>>> {
    let mut bytes = Vec::with_capacity(mine.len() * 24);
    for s in mine {
        bytes.extend_from_slice(&s.loss_sum.to_le_bytes());
        bytes.extend_from_slice(&(s.count as u64).to_le_bytes());
        bytes.extend_from_slice(&(s.correct as u64).to_le_bytes());
    }
    let word = |b: &[u8], i: usize| -> [u8; 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        w
    };
    comm.all_gather(&bytes)?
        .iter()
        .map(|b| {
            if b.len() % 24 != 0 {
                return Err(Error::config(
                    "data-parallel",
                    b.len(),
                    "a rank sent loss sums of a bad size (ranks of different versions?)",
                ));
            }
            Ok((0..b.len() / 24)
                .map(|j| LossSum {
                    loss_sum: f64::from_le_bytes(word(b, 3 * j)),
                    count: u64::from_le_bytes(word(b, 3 * j + 1)) as usize,
                    correct: u64::from_le_bytes(word(b, 3 * j + 2)) as usize,
                })
                .collect())
        })
        .collect()
}

/// The rows `(start, len)` of a batch of `b` that rank `rank` of `ranks` takes; an error if a
/// rank would get none.
pub fn rank_rows(b: usize, rank: usize, ranks: usize) -> Result<(usize, usize)> {
    if b < ranks {
        return Err(Error::config(
            "batch_size",
            b,
            format!(
                "a data-parallel run splits each batch's sequences over its {ranks} ranks: the \
                 batch needs at least one sequence per rank (raise --batch-size, or use fewer \
                 ranks)"
            ),
        ));
    }
    Ok(shard_ranges(b, ranks)[rank])
}

/// Ranks as threads of one process, over channels: the same collectives as MPI, for tests.
#[cfg(any(test, feature = "testing"))]
pub struct LocalComm {
    rank: usize,
    size: usize,
    /// `tx[to]`: to rank `to`.
    tx: Vec<std::sync::mpsc::Sender<Vec<u8>>>,
    /// `rx[from]`: from rank `from`.
    rx: Vec<std::sync::mpsc::Receiver<Vec<u8>>>,
}

#[cfg(any(test, feature = "testing"))]
impl LocalComm {
    /// `n` connected ranks (move each to its own thread).
    pub fn group(n: usize) -> Vec<LocalComm> {
        use std::sync::mpsc::channel;
        // chan[from][to]
        let mut senders: Vec<Vec<Option<std::sync::mpsc::Sender<Vec<u8>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<std::sync::mpsc::Receiver<Vec<u8>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        for from in 0..n {
            for to in 0..n {
                let (t, r) = channel();
                senders[from][to] = Some(t);
                receivers[to][from] = Some(r);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (tx, rx))| LocalComm {
                rank,
                size: n,
                tx: tx.into_iter().flatten().collect(),
                rx: rx.into_iter().flatten().collect(),
            })
            .collect()
    }

    fn send(&self, to: usize, b: Vec<u8>) -> Result<()> {
        self.tx[to]
            .send(b)
            .map_err(|_| Error::config("LocalComm", to, "rank is gone"))
    }

    fn recv(&self, from: usize) -> Result<Vec<u8>> {
        self.rx[from]
            .recv()
            .map_err(|_| Error::config("LocalComm", from, "rank is gone"))
    }
}

#[cfg(any(test, feature = "testing"))]
impl Comm for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn exchange(&mut self, send: &[f32], to: usize, recv: &mut [f32], from: usize) -> Result<()> {
        self.send(to, send.iter().flat_map(|v| v.to_le_bytes()).collect())?;
        let b = self.recv(from)?;
        if b.len() != recv.len() * 4 {
            return Err(Error::shape(
                "LocalComm",
                "exchange",
                recv.len() * 4,
                b.len(),
            ));
        }
        for (v, c) in recv.iter_mut().zip(b.chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }
    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        for to in 0..self.size {
            if to != self.rank {
                self.send(to, mine.to_vec())?;
            }
        }
        (0..self.size)
            .map(|from| {
                if from == self.rank {
                    Ok(mine.to_vec())
                } else {
                    self.recv(from)
                }
            })
            .collect()
    }
    fn describe(&self) -> String {
        format!("{} threads", self.size)
    }
}

/// MPI's world communicator (`mpirun -np N hyena train …`, `srun`): MPI is initialised by
/// [`MpiComm::from_env`] and finalised when the value is dropped.
#[cfg(feature = "mpi")]
pub struct MpiComm {
    world: mpi::topology::SimpleCommunicator,
    // Dropped last: MPI_Finalize.
    _universe: mpi::environment::Universe,
}

#[cfg(feature = "mpi")]
impl MpiComm {
    /// MPI's world when this process was started by an MPI launcher (Open MPI's `mpirun`, or
    /// a PMI/PMIx launcher such as Slurm's `srun`), else `None` (a plain single process: MPI
    /// is not initialised at all).
    pub fn from_env() -> Result<Option<Self>> {
        let launched = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if !launched {
            return Ok(None);
        }
        let universe = mpi::initialize().ok_or_else(|| {
            Error::config(
                "mpi",
                "MPI_Init",
                "MPI was already initialised or could not start",
            )
        })?;
        let world = universe.world();
        Ok(Some(MpiComm {
            world,
            _universe: universe,
        }))
    }
}

#[cfg(feature = "mpi")]
impl Comm for MpiComm {
    fn rank(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.size() as usize
    }
    fn exchange(&mut self, send: &[f32], to: usize, recv: &mut [f32], from: usize) -> Result<()> {
        use mpi::topology::Communicator;
        let dst = self.world.process_at_rank(to as i32);
        let src = self.world.process_at_rank(from as i32);
        mpi::point_to_point::send_receive_into(send, &dst, recv, &src);
        Ok(())
    }
    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        use mpi::collective::CommunicatorCollectives;
        use mpi::datatype::PartitionMut;
        use mpi::topology::Communicator;
        let n = self.world.size() as usize;
        let len = mine.len() as i32;
        let mut lens = vec![0i32; n];
        self.world.all_gather_into(&len, &mut lens[..]);
        let displs: Vec<i32> = lens
            .iter()
            .scan(0i32, |acc, &l| {
                let d = *acc;
                *acc += l;
                Some(d)
            })
            .collect();
        let mut buf = vec![0u8; lens.iter().map(|&l| l as usize).sum()];
        {
            let mut part = PartitionMut::new(&mut buf[..], &lens[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        Ok(lens
            .iter()
            .zip(&displs)
            .map(|(&l, &d)| buf[d as usize..(d + l) as usize].to_vec())
            .collect())
    }
    fn describe(&self) -> String {
        let v = mpi::environment::library_version().unwrap_or_else(|_| "MPI".into());
        format!(
            "MPI, {} ranks ({})",
            self.size(),
            v.lines().next().unwrap_or("").trim()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `f(comm)` on `n` thread ranks; results in rank order.
    fn ranks<T: Send + 'static>(
        n: usize,
        f: impl Fn(&mut LocalComm) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = std::sync::Arc::new(f);
        let hs: Vec<_> = LocalComm::group(n)
            .into_iter()
            .map(|mut c| {
                let f = f.clone();
                std::thread::spawn(move || f(&mut c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn data(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 31 + rank * 17) % 101) as f32 * 0.37 - 11.0 + rank as f32 * 1e-3)
            .collect()
    }

    #[test]
    fn ring_all_reduce_is_the_sum_in_its_fixed_order_on_every_rank() {
        for n in [1, 2, 3, 4, 5] {
            // Lengths not divisible by the rank count, and shorter than it.
            for len in [1, 3, 7, 64, 1001] {
                let out = ranks(n, move |c| {
                    let mut b = data(c.rank(), len);
                    all_reduce_sum(c, &mut b, &mut Vec::new()).unwrap();
                    b
                });
                let seg = shard_ranges(len, n);
                for (k, &(s, l)) in seg.iter().enumerate() {
                    for i in s..s + l {
                        // g_k + g_{k+1} + … in ring order.
                        let mut want = data(k % n, len)[i];
                        for j in 1..n {
                            want += data((k + j) % n, len)[i];
                        }
                        for o in &out {
                            assert_eq!(o[i].to_bits(), want.to_bits(), "n {n} len {len} i {i}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn two_ranks_sum_as_one_process_adds_two_shards() {
        // The buffer of shard 0 plus that of shard 1: what one process with two thread shards
        // computes (`run_shards`), bit for bit.
        let len = 257;
        let out = ranks(2, move |c| {
            let mut b = data(c.rank(), len);
            all_reduce_sum(c, &mut b, &mut Vec::new()).unwrap();
            b
        });
        let (a, b) = (data(0, len), data(1, len));
        for i in 0..len {
            assert_eq!(out[0][i].to_bits(), (a[i] + b[i]).to_bits());
        }
    }

    #[test]
    fn a_failure_on_one_rank_is_every_rank_s() {
        let out = ranks(3, |c| {
            let local: Result<u32> = if c.rank() == 1 {
                Err(Error::format("data.fa", "bad record on rank 1"))
            } else {
                Ok(7)
            };
            agree(c, local).map_err(|e| e.to_string())
        });
        for o in &out {
            assert_eq!(
                o.as_ref().unwrap_err(),
                "rank 1 of 3: data.fa: bad record on rank 1"
            );
        }
        let ok = ranks(3, |c| {
            let r = c.rank();
            agree(c, Ok(r)).unwrap()
        });
        assert_eq!(ok, vec![0, 1, 2]);
    }

    #[test]
    fn loss_sums_round_trip_in_rank_order() {
        let out = ranks(3, |c| {
            let mine = vec![
                LossSum {
                    loss_sum: 0.1 + c.rank() as f64,
                    count: 10 + c.rank(),
                    correct: c.rank(),
                };
                2
            ];
            gather_loss_sums(c, &mine).unwrap()
        });
        for o in &out {
            for (r, sums) in o.iter().enumerate() {
                assert_eq!(sums.len(), 2);
                assert_eq!(sums[1].loss_sum.to_bits(), (0.1 + r as f64).to_bits());
                assert_eq!((sums[0].count, sums[0].correct), (10 + r, r));
            }
        }
        assert!(rank_rows(1, 0, 2).is_err());
        assert_eq!(rank_rows(5, 1, 2).unwrap(), (3, 2));
    }
}
