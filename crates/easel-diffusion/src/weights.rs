//! Reading safetensors weights one tensor at a time.
//!
//! candle's memory-mapped loader keeps every mapped page resident while it copies the tensors
//! out, so loading briefly needs about twice the weights' size (7.9 GiB peak for SD-Turbo's
//! 5.2 GB). This backend parses the header once and reads each tensor with positioned reads
//! when a model constructor asks for it, so the peak is the weights plus one tensor; a tensor
//! stored in a dtype candle holds (f32, f16, bf16) is read straight into its own buffer, by every
//! thread at once, offered huge pages first ([`FileTensors::read_into`]). No unsafe.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorInfo, TensorView};

/// Bytes one thread reads at a time into a tensor's buffer ([`FileTensors::read_into`]).
const READ_CHUNK: usize = 4 << 20;

struct FileTensors {
    file: File,
    data_start: u64,
    infos: HashMap<String, TensorInfo>,
    path: String,
}

impl FileTensors {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let n = u64::from_le_bytes(len);
        if n > 100 * 1024 * 1024 {
            anyhow::bail!("{}: safetensors header of {n} bytes is implausible", path.display());
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)?;
        let mut entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).with_context(|| format!("{}: bad safetensors header", path.display()))?;
        entries.remove("__metadata__");
        let infos = entries
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_value::<TensorInfo>(v)?)))
            .collect::<Result<HashMap<_, _>>>()
            .with_context(|| format!("{}: bad tensor entry in the safetensors header", path.display()))?;
        Ok(Self { file, data_start: 8 + n, infos, path: path.display().to_string() })
    }

    fn read(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let info = self
            .infos
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name} in {}", self.path)))?;
        let (a, b) = info.data_offsets;
        let len = b.checked_sub(a).ok_or_else(|| {
            candle_core::Error::Msg(format!("{name} in {}: its data ends before it starts", self.path))
        })?;
        let start = self.data_start + a as u64;
        let shape = info.shape.as_slice();
        let little = cfg!(target_endian = "little");
        let cpu = match info.dtype {
            // Stored as candle holds it (safetensors is little-endian): read straight into the
            // tensor's own buffer.
            Dtype::F32 if little => self.read_into::<f32>(name, shape, start, len)?,
            Dtype::F16 if little => self.read_into::<half::f16>(name, shape, start, len)?,
            Dtype::BF16 if little => self.read_into::<half::bf16>(name, shape, start, len)?,
            _ => {
                let mut bytes = vec![0u8; len];
                self.file.read_exact_at(&mut bytes, start).map_err(candle_core::Error::wrap)?;
                let view = TensorView::new(info.dtype, info.shape.clone(), &bytes).map_err(candle_core::Error::wrap)?;
                view.load(&Device::Cpu)?
            }
        };
        cpu.to_dtype(dtype)?.to_device(dev)
    }

    /// The `len` bytes at `start` as a CPU tensor of `T` and `shape`, read into its buffer by
    /// every thread at once ([`READ_CHUNK`]) with the buffer offered huge pages first. A load's
    /// cost is the kernel clearing each fresh page as the read first writes it (about 70 % of an
    /// SDXL load under `perf`); this way sd-turbo loads 2.4–3.1× faster than on one thread with
    /// 4 KiB pages (2-core Zen 5, docs/performance.md).
    fn read_into<T: bytemuck::Pod + WithDType>(
        &self,
        name: &str,
        shape: &[usize],
        start: u64,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let n = shape.iter().product::<usize>();
        if n.checked_mul(size_of::<T>()) != Some(len) {
            return Err(candle_core::Error::Msg(format!(
                "{name} in {}: {len} bytes for {n} values of {} bytes",
                self.path,
                size_of::<T>()
            )));
        }
        let mut data = bytemuck::zeroed_vec::<T>(n);
        easel_core::memory::prefer_huge_pages(&mut data);
        bytemuck::cast_slice_mut::<T, u8>(&mut data)
            .par_chunks_mut(READ_CHUNK)
            .enumerate()
            .try_for_each(|(i, chunk)| self.file.read_exact_at(chunk, start + (i * READ_CHUNK) as u64))
            .map_err(candle_core::Error::wrap)?;
        Tensor::from_vec(data, shape, &Device::Cpu)
    }
}

impl SimpleBackend for FileTensors {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.read(name, dtype, dev)?;
        if t.shape() != &s {
            return Err(shape_mismatch(name, &self.path, &s, t.dims()));
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.infos.contains_key(name)
    }
}

/// The error every backend here gives for a tensor of the wrong shape, naming it and its file.
fn shape_mismatch(name: &str, file: &str, expected: &Shape, found: &[usize]) -> candle_core::Error {
    candle_core::Error::Msg(format!("shape mismatch for {name} in {file}: expected {expected:?}, found {found:?}"))
}

/// A `VarBuilder` over one safetensors file, reading tensors on demand.
pub fn var_builder(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let backend = FileTensors::open(path)?;
    Ok(VarBuilder::from_backend(Box::new(backend), dtype, device.clone()))
}

/// Several safetensors files (a sharded checkpoint) behind one name lookup.
struct ShardedTensors {
    files: Vec<FileTensors>,
}

impl ShardedTensors {
    fn find(&self, name: &str) -> candle_core::Result<&FileTensors> {
        self.files.iter().find(|f| f.infos.contains_key(name)).ok_or_else(|| {
            let first = self.files.first().map(|f| f.path.as_str()).unwrap_or("?");
            candle_core::Error::Msg(format!("cannot find tensor {name} in {first} or its other shards"))
        })
    }
}

impl SimpleBackend for ShardedTensors {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.find(name)?.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.find(name)?.read(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.infos.contains_key(name))
    }
}

/// A `VarBuilder` over one or more safetensors files (the shards of one component).
pub fn var_builder_files(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    if let [one] = paths {
        return var_builder(one, dtype, device);
    }
    let files = paths.iter().map(|p| FileTensors::open(p)).collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(!files.is_empty(), "no weights files");
    Ok(VarBuilder::from_backend(Box::new(ShardedTensors { files }), dtype, device.clone()))
}

/// Bytes the tensors of `paths` whose names `keep` takes would take in `dtype`, from the headers
/// alone (for the memory plan).
pub fn bytes_in(paths: &[PathBuf], dtype: DType, keep: &dyn Fn(&str) -> bool) -> Result<u64> {
    let mut elements = 0u64;
    for p in paths {
        let f = FileTensors::open(p)?;
        let kept = f.infos.iter().filter(|(name, _)| keep(name));
        elements += kept.map(|(_, i)| i.shape.iter().product::<usize>() as u64).sum::<u64>();
    }
    Ok(elements * dtype.size_in_bytes() as u64)
}

/// Every tensor of `paths` read into host memory in `dtype`: the copy a part kept off its GPU
/// between uses is rebuilt from ([`HostTensors::var_builder`]). Clones share the tensors.
#[derive(Clone)]
pub struct HostTensors {
    tensors: Arc<HashMap<String, Tensor>>,
    origin: Arc<str>,
}

impl HostTensors {
    pub fn read(paths: &[PathBuf], dtype: DType) -> Result<Self> {
        let mut tensors = HashMap::new();
        for p in paths {
            let f = FileTensors::open(p)?;
            for name in f.infos.keys() {
                tensors.insert(name.clone(), f.read(name, dtype, &Device::Cpu)?);
            }
        }
        let origin = paths.first().map(|p| p.display().to_string()).unwrap_or_default();
        Ok(Self { tensors: Arc::new(tensors), origin: origin.into() })
    }

    /// A `VarBuilder` that copies each tensor to `device` as the model asks for it.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    fn find(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name} in {}", self.origin)))
    }
}

impl SimpleBackend for HostTensors {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.find(name)?;
        if t.shape() != &s {
            return Err(shape_mismatch(name, &self.origin, &s, t.dims()));
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.find(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Checks tensor names and shapes against the headers of `paths` without reading any data: each
/// tensor a model asks for is a zero broadcast to its shape (no memory), on the CPU. A model
/// built from [`checker`] proves the files hold what loading it later will need.
struct HeaderCheck(ShardedTensors);

impl SimpleBackend for HeaderCheck {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let f = self.0.find(name)?;
        let found = &f.infos[name].shape;
        if found.as_slice() != s.dims() {
            return Err(shape_mismatch(name, &f.path, &s, found));
        }
        Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let f = self.0.find(name)?;
        Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(f.infos[name].shape.as_slice())
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// A `VarBuilder` for checking, not running, a model (see [`HeaderCheck`]).
pub fn checker(paths: &[PathBuf], dtype: DType) -> Result<VarBuilder<'static>> {
    let files = paths.iter().map(|p| FileTensors::open(p)).collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(!files.is_empty(), "no weights files");
    Ok(VarBuilder::from_backend(Box::new(HeaderCheck(ShardedTensors { files })), dtype, Device::Cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("a".to_string(), a), ("b".to_string(), b)]), &path).unwrap();
        (dir, path)
    }

    /// The host copy (a part kept off its GPU) gives what the file gives, and names what is wrong.
    #[test]
    fn host_copies_read_as_the_file_does() {
        let (_dir, path) = file();
        let files = [path];
        let host = HostTensors::read(&files, DType::BF16).unwrap();
        let (from_host, from_file) =
            (host.var_builder(DType::F32, &Device::Cpu), var_builder_files(&files, DType::BF16, &Device::Cpu).unwrap());
        for (name, dims) in [("a", vec![2, 3]), ("b", vec![2])] {
            let shape = Shape::from(dims);
            let h = from_host.get(shape.clone(), name).unwrap();
            let f = from_file.get(shape, name).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(h.dtype(), DType::F32);
            assert_eq!(
                h.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                f.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        let err = from_host.get((3, 2), "a").unwrap_err().to_string();
        assert!(err.contains("shape mismatch for a") && err.contains("w.safetensors"), "{err}");
        assert!(from_host.get(2, "c").unwrap_err().to_string().contains("cannot find tensor c"));
    }

    /// Every stored dtype reads as candle's own loader reads it, whichever dtype is asked: f32
    /// past one read chunk (read in parts, the last one short), f16 and bf16 straight into their
    /// buffers, u8 through the general path.
    #[test]
    fn tensors_read_as_candles_loader_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dev = Device::Cpu;
        let big = 3 * (READ_CHUNK / 4 * 2 / 3 + 1);
        let x = Tensor::arange(0f32, big as f32, &dev).unwrap().affine(1e-3, -7.0).unwrap();
        let tensors = HashMap::from([
            ("f32".to_string(), x.reshape((3, big / 3)).unwrap()),
            ("f16".to_string(), x.narrow(0, 0, 1000).unwrap().to_dtype(DType::F16).unwrap()),
            (
                "bf16".to_string(),
                x.narrow(0, 5, 24).unwrap().reshape((2, 3, 4)).unwrap().to_dtype(DType::BF16).unwrap(),
            ),
            ("u8".to_string(), Tensor::new(&[0u8, 7, 255], &dev).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let want = candle_core::safetensors::load(&path, &dev).unwrap();
        let flat = |t: Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let vb = var_builder(&path, dtype, &dev).unwrap();
            for (name, stored) in &want {
                let got = vb.get(stored.shape(), name).unwrap();
                assert_eq!(got.dtype(), dtype, "{name}");
                assert_eq!(flat(got), flat(stored.to_dtype(dtype).unwrap()), "{name} as {dtype:?}");
            }
        }
        // A file cut short names the tensor's read as failing instead of panicking.
        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() - 10]).unwrap();
        let vb = var_builder(&path, DType::F32, &dev).unwrap();
        let names = ["f32", "f16", "bf16", "u8"];
        assert!(names.iter().any(|n| vb.get(want[*n].shape(), n).is_err()));
    }

    /// The checker reads no data: it answers from the header, shapes checked.
    #[test]
    fn the_checker_answers_from_the_header() {
        let (_dir, path) = file();
        let files = [path];
        let vb = checker(&files, DType::F32).unwrap();
        let a = vb.get((2, 3), "a").unwrap();
        assert_eq!((a.dims(), a.sum_all().unwrap().to_scalar::<f32>().unwrap()), (&[2, 3][..], 0.0));
        assert!(vb.get((3, 2), "a").unwrap_err().to_string().contains("expected [3, 2], found [2, 3]"));
        assert_eq!(bytes_in(&files, DType::BF16, &|_| true).unwrap(), 16);
        assert_eq!(bytes_in(&files, DType::F32, &|n| n == "b").unwrap(), 8);
    }
}
