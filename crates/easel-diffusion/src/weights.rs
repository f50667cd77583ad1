//! Reading safetensors weights one tensor at a time.
//!
//! candle's memory-mapped loader keeps every mapped page resident while it copies the tensors
//! out, so loading briefly needs about twice the weights' size (7.9 GiB peak for SD-Turbo's
//! 5.2 GB). This backend parses the header once and reads each tensor with a positioned read
//! when a model constructor asks for it, so the peak is the weights plus one tensor. No unsafe.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use safetensors::tensor::TensorInfo;

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
        let mut bytes = vec![0u8; b - a];
        self.file.read_exact_at(&mut bytes, self.data_start + a as u64).map_err(candle_core::Error::wrap)?;
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), &bytes)
            .map_err(candle_core::Error::wrap)?;
        view.load(&Device::Cpu)?.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for FileTensors {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.read(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("shape mismatch for {name} in {}: expected {s:?}, found {:?}", self.path, t.shape());
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
pub fn var_builder_files(paths: &[std::path::PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    if let [one] = paths {
        return var_builder(one, dtype, device);
    }
    let files = paths.iter().map(|p| FileTensors::open(p)).collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(!files.is_empty(), "no weights files");
    Ok(VarBuilder::from_backend(Box::new(ShardedTensors { files }), dtype, device.clone()))
}
