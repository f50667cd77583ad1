//! The tiny autoencoder against diffusers' `AutoencoderTiny`, in CI without Python:
//! `tests/taesd/tiny.safetensors` holds diffusers' decode of fixed latents and its encode
//! of that image, on the random tiny TAESD that `create_tiny_vae` writes for seed 0 (written by
//! `scripts/parity/run.sh taesd --golden`; the weights' sha256 is in its metadata, checked first
//! so a change in the random weights reads as such, not as a math error). Also the options'
//! checks: what needs a tiny VAE, and a missing folder named at the config check.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use easel_diffusion::random::{Scale, create_tiny_vae};
use easel_diffusion::taesd::TinyVaeLayout;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Max |easel − diffusers| / max |diffusers|; measured 7.1e-7 (image) and 1.9e-7 (encoded).
const TOLERANCE: f32 = 1e-5;

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    diff / scale.max(1e-12)
}

#[test]
fn tiny_vae_matches_diffusers_autoencoder_tiny() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/taesd/tiny.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().expect("the fixture records its weights' hash");
    let fixture = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();

    let dir = tempfile::tempdir().unwrap();
    create_tiny_vae(dir.path(), Scale::Tiny, meta["model_seed"].parse().unwrap()).unwrap();
    let weights = std::fs::read(dir.path().join("diffusion_pytorch_model.safetensors")).unwrap();
    let hash: String = Sha256::digest(&weights).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hash, meta["weights_sha256"],
        "create_tiny_vae's weights changed: regenerate with `scripts/parity/run.sh taesd --golden`"
    );

    let vae = TinyVaeLayout::read(dir.path()).unwrap().load(DType::F32, &Device::Cpu).unwrap();
    let image = vae.decode(&fixture["latents"]).unwrap();
    assert_eq!(image.dims(), fixture["image"].dims());
    let err = rel(&image, &fixture["image"]);
    assert!(err < TOLERANCE, "decode: {err:.2e} from diffusers");
    let encoded = vae.encode(&fixture["image"]).unwrap();
    let err = rel(&encoded, &fixture["encoded"]);
    assert!(err < TOLERANCE, "encode: {err:.2e} from diffusers");
}

#[test]
fn taesd_options_need_a_tiny_vae_and_name_a_missing_one() {
    let model = tempfile::tempdir().unwrap();
    let path = model.path().join("m");
    easel_diffusion::random::create(easel_diffusion::Family::SdTurbo, Scale::Tiny, &path, 0, None).unwrap();
    let options = |extra: serde_json::Value| {
        let mut o = json!({"family": "sd-turbo", "path": path});
        o.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        o
    };
    for extra in [json!({"preview": "taesd"}), json!({"decoder": "taesd"})] {
        let err = easel_diffusion::check("m", &options(extra)).unwrap_err();
        assert!(format!("{err:#}").contains("need tiny_vae"), "{err:#}");
    }
    let err = easel_diffusion::check("m", &options(json!({"decoder": "tiny"}))).unwrap_err();
    assert!(format!("{err:#}").contains("unknown variant"), "{err:#}");

    let missing = model.path().join("no-such-taesd");
    let err = easel_diffusion::check("m", &options(json!({"tiny_vae": missing, "preview": "taesd"}))).unwrap_err();
    assert!(format!("{err:#}").contains(&missing.display().to_string()), "{err:#}");

    let tiny = model.path().join("taesd");
    create_tiny_vae(&tiny, Scale::Tiny, 0).unwrap();
    easel_diffusion::check("m", &options(json!({"tiny_vae": tiny, "preview": "taesd", "decoder": "taesd"}))).unwrap();
    std::fs::write(tiny.join("config.json"), r#"{"_class_name": "AutoencoderKL"}"#).unwrap();
    let err = easel_diffusion::check("m", &options(json!({"tiny_vae": tiny}))).unwrap_err();
    assert!(format!("{err:#}").contains("not AutoencoderTiny"), "{err:#}");
}
