"""`magc train` end to end on a real training image, a few steps, for both recipes (lite on
the CPU, the SD-size recipe through accelerate), then the exported weights encode and decode."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magc.api import decode_raster, encode_raster
from magc.cli import main
from magc.models.loading import load_codec
from magc.train.data import prepare_image

from conftest import SHARED_DATA, need


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    source = need(SHARED_DATA / "dubai-aerial" / "tile2")
    folder = tmp_path_factory.mktemp("data")
    item = prepare_image(source / "images" / "image_part_001.jpg", source / "masks" / "image_part_001.png", folder, "t2p1", (220_000.0, 2_800_000.0))
    (folder / "index.json").write_text(json.dumps([{**item, "tile": 2, "split": "train"}]))
    return folder


@pytest.mark.parametrize("preset", ["tiny-lite", "tiny-sd21"])
def test_train_export_and_use(preset: str, data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    weights = tmp_path / f"{preset}.safetensors"
    code = main(["train", "--preset", preset, "--data", str(data_dir), "--run", str(tmp_path / "run"), "--steps", "2,2",
                 "--device", "cpu", "--lr", "3e-5", "--export", str(weights)])
    assert code == 0 and weights.is_file()
    recipe = json.loads((tmp_path / "run" / "recipe.json").read_text())["recipe"]
    assert recipe.get("lr", recipe.get("stage1_lr")) == 3e-5  # the SD-size recipe's one rate, or lite's stage 1's
    manifest = json.loads(weights.with_name(f"{preset}.manifest.json").read_text())
    assert manifest["preset"] == preset and len(manifest["sha256"]) == 64
    loaded = load_codec(preset, weights=weights, device="cpu")  # trained: no --allow-untrained needed
    assert loaded.trained
    raster, layer = data_dir / "t2p1.tif", data_dir / "t2p1.gpkg"
    maps = [str(layer)] if loaded.preset.map.kind == "classes" else []
    encode_raster(raster, tmp_path / "x.magc", maps, codec=loaded)
    decode_raster(tmp_path / "x.magc", tmp_path / "x.tif", maps, codec=loaded)
    assert (tmp_path / "x.tif").is_file()


def test_training_goes_on_from_trained_weights_without_the_run_folder(data_dir: Path, tmp_path: Path) -> None:
    """--init: a fresh machine adds stage-2 steps to trained weights, keeping the LCM and its
    entropy tables (the same bits per rate); stage 2 without stage 1's checkpoint or --init is
    a clear error, not a traceback."""
    from magc.models.weights import load_state

    torch.set_num_threads(2)
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    common = ["train", "--preset", "tiny-lite", "--data", str(data_dir)]
    assert main(common + ["--run", str(tmp_path / "a"), "--steps", "2,2", "--export", str(first)]) == 0
    assert main(common + ["--run", str(tmp_path / "b"), "--stages", "2", "--steps", "0,2"]) == 2
    assert main(common + ["--run", str(tmp_path / "c"), "--stages", "2", "--steps", "0,2", "--init", str(first),
                          "--export", str(second)]) == 0
    assert json.loads(second.with_name("second.manifest.json").read_text())["started_from"] == str(first)
    before, after = load_state(first), load_state(second)
    frozen = [k for k in before if k.startswith(("autoencoder.encoder.", "autoencoder.decoder.", "lcm."))]  # entropy tables too
    trained = [k for k in before if k.startswith("denoiser.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # started from the weights, stage 2 froze them
    assert any(not torch.equal(before[k], after[k]) for k in trained)  # and trained the denoiser further
    assert main(common + ["--run", str(tmp_path / "d"), "--init", str(tmp_path / "none.safetensors")]) != 0


def test_stage3_teaches_the_decoder_the_map_and_keeps_everything_else(data_dir: Path, tmp_path: Path) -> None:
    """`--stages 3` on trained weights: only the autoencoder's decoder learns (its map paths
    among it), every other tensor and the entropy tables stay as they were, the log holds
    the decoded quality, and the weights encode and decode. A preset whose decoder reads no
    map, stage 3 without stage 2 or --init, and an unknown stage are clear errors."""
    from magc.models.weights import load_state

    torch.set_num_threads(2)
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    common = ["train", "--preset", "tiny-lite", "--data", str(data_dir)]
    assert main(common + ["--run", str(tmp_path / "a"), "--steps", "2,2", "--export", str(first)]) == 0
    before = load_state(first)
    assert main(common + ["--run", str(tmp_path / "b"), "--stages", "3", "--steps", "0,0,0,3", "--init", str(first),
                          "--export", str(second)]) == 0
    after = load_state(second)
    assert set(after) == set(before)
    kept = [k for k in before if not k.startswith("autoencoder.decoder.")]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    map_paths = [k for k in after if k.startswith("autoencoder.decoder.map")]
    assert len(map_paths) == 4 and all(not torch.equal(before[k], after[k]) for k in map_paths)
    logs = [json.loads(line) for line in (tmp_path / "b" / "stage3.log.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 3 and 0.0 < logs[-1]["msssim"] <= 1.0 and logs[-1]["psnr"] > 0
    loaded = load_codec("tiny-lite", weights=second, device="cpu")
    raster, layer = data_dir / "t2p1.tif", data_dir / "t2p1.gpkg"
    encode_raster(raster, tmp_path / "x.magc", [str(layer)], codec=loaded)
    decode_raster(tmp_path / "x.magc", tmp_path / "x.tif", [str(layer)], codec=loaded)
    assert (tmp_path / "x.tif").is_file()
    assert main(["train", "--preset", "tiny-sprdiff", "--data", str(data_dir), "--run", str(tmp_path / "c"), "--stages", "3"]) == 2
    assert main(common + ["--run", str(tmp_path / "d"), "--stages", "3", "--steps", "0,0,0,3"]) == 2
    assert main(common + ["--run", str(tmp_path / "e"), "--stages", "1,4"]) == 2


def test_each_stage_learns_against_the_critic_at_its_own_weight(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """--semantic-weight W2,W3: stage 2 and stage 3 get their own weight (one number: both);
    the run's recipe.json, which the manifest copies, records them, and stage 3 learns at W3
    (tiny-lite samples from pure noise, so its stage 2 has no decode path for the critic)."""
    import magc.train.decoder_stage as decoder_stage

    torch.set_num_threads(2)
    seen: list[float] = []
    real_stage3 = decoder_stage.train_decoder

    def stage3(*args, semantic_weight=None, **kwargs):
        seen.append(semantic_weight)
        return real_stage3(*args, semantic_weight=semantic_weight, **kwargs)

    monkeypatch.setattr(decoder_stage, "train_decoder", stage3)
    common = ["train", "--preset", "tiny-lite", "--data", str(data_dir), "--steps", "2,2,2,2", "--stages", "1,2,3"]
    for run, given, weights in (("a", "0.2,0.7", (0.2, 0.7)), ("b", "0.5", (0.5, 0.5))):
        assert main(common + ["--run", str(tmp_path / run), "--semantic-weight", given]) == 0
        recipe = json.loads((tmp_path / run / "recipe.json").read_text())["recipe"]
        assert (recipe["semantic_weight"], recipe["stage3_semantic_weight"]) == weights
        assert seen[-1] == weights[1]


def test_lr_sets_each_stages_peak_learning_rate(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """--lr LR1,LR2,LR3 reaches each stage's loop (one number: every stage), and recipe.json records it."""
    import magc.train.decoder_stage as decoder_stage
    import magc.train.magc_stages as magc_stages

    torch.set_num_threads(2)
    seen: dict[str, float] = {}

    def spy(real):
        def run_loop(name, run_dir, cfg, *args, **kwargs):
            seen[name] = cfg.lr
            return real(name, run_dir, cfg, *args, **kwargs)
        return run_loop

    for module in (magc_stages, decoder_stage):
        monkeypatch.setattr(module, "run_loop", spy(module.run_loop))
    common = ["train", "--preset", "tiny-lite", "--data", str(data_dir), "--steps", "2,2,0,2", "--stages", "1,2,3"]
    for run, given, rates in (("a", "1e-3,2e-3,3e-3", (1e-3, 2e-3, 3e-3)), ("b", "7e-5", (7e-5,) * 3)):
        assert main(common + ["--run", str(tmp_path / run), "--lr", given]) == 0
        assert (seen["stage1"], seen["stage2"], seen["stage3"]) == rates
        recipe = json.loads((tmp_path / run / "recipe.json").read_text())["recipe"]
        assert (recipe["stage1_lr"], recipe["stage2_lr"], recipe["stage3_lr"]) == rates


def _stage2_setup():
    """A tiny-lite codec decoding from z~ (strength 0.6), one random scene, a random frozen critic."""
    import dataclasses

    import numpy as np

    from magc.config import load_preset
    from magc.models.loading import build_codec
    from magc.train.critic import SemanticCritic
    from magc.train.data import CropSampler, Scene

    torch.manual_seed(0)
    preset = load_preset("tiny-lite")
    preset = dataclasses.replace(preset, sampler=dataclasses.replace(preset.sampler, strength=0.6))
    codec = build_codec(preset)
    codec.autoencoder.scaling_factor.fill_(2.0)  # as if scaled already: stage 2 then keeps every stage-1 weight
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 200, 200)).astype(np.uint8)
    scenes = [Scene("a", image, rng.integers(0, 5, (200, 200)).astype(np.uint8), np.zeros((200, 200), np.uint8))]
    critic = SemanticCritic(5).eval().requires_grad_(False)
    return codec, CropSampler(scenes, 192), critic


def test_lite_stage2_learns_on_the_decode_path(tmp_path: Path) -> None:
    """Where decoding starts from re-noised z~ (strength < 1), stage 2 trains half of each batch
    on the sampler's own path and logs the decoded MS-SSIM of that half beside z~'s, and the
    semantic critic's verdict on it; the autoencoder, the LCM and the critic stay frozen."""
    from magc.train.loop import LoopConfig
    from magc.train.magc_stages import train_stage2

    codec, sampler, critic = _stage2_setup()
    frozen = {k: v.clone() for k, v in codec.state_dict().items() if k.startswith(("autoencoder.encoder", "autoencoder.decoder", "lcm."))}
    denoiser_before = {k: v.clone() for k, v in codec.denoiser.state_dict().items()}
    critic_before = {k: v.clone() for k, v in critic.state_dict().items()}
    train_stage2(codec, sampler, tmp_path, LoopConfig(3, 1e-3, warmup=1, log_every=2), batch=4, critic=critic)
    logs = [json.loads(line) for line in (tmp_path / "stage2.log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [2, 3]
    assert all(0.0 < entry["msssim_path"] <= 1.0 and 0.0 < entry["msssim_ztilde"] <= 1.0 for entry in logs)
    assert all(entry["critic_ce_path"] > 0.0 and 0.0 <= entry["critic_accuracy_path"] <= 1.0 for entry in logs)
    assert all(0.0 <= entry["critic_accuracy_ztilde"] <= 1.0 and entry["seconds_per_step"] > 0 for entry in logs)
    state = codec.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert all(torch.equal(critic.state_dict()[k], v) for k, v in critic_before.items())  # a judge, not trained here
    assert any(not torch.equal(codec.denoiser.state_dict()[k], v) for k, v in denoiser_before.items())


def test_stage2_semantic_weight_scales_the_critic_term(tmp_path: Path) -> None:
    """The same first step with weights 0 and 2: the losses differ by twice the critic's cross-entropy."""
    from magc.train.loop import LoopConfig
    from magc.train.magc_stages import train_stage2

    losses = {}
    for weight in (0.0, 2.0):
        codec, sampler, critic = _stage2_setup()
        run = tmp_path / f"w{weight:g}"
        train_stage2(codec, sampler, run, LoopConfig(1, 1e-3, warmup=1), batch=4, critic=critic, semantic_weight=weight)
        losses[weight] = json.loads((run / "stage2.log.jsonl").read_text().splitlines()[0])
    ce = losses[2.0]["critic_ce_path"]
    assert ce == pytest.approx(losses[0.0]["critic_ce_path"], rel=1e-5) and ce > 0.1
    assert losses[2.0]["loss"] - losses[0.0]["loss"] == pytest.approx(2.0 * ce, rel=1e-4)


def test_semantic_critic_learns_classes_from_their_look(tmp_path: Path) -> None:
    """The critic trains from scratch on originals and labels (unlabelled pixels ignored): on a
    scene where each class has its own colour and texture it must segment fresh crops, and a
    second call with the same run folder resumes the finished run instead of training again."""
    import numpy as np

    from magc.train.critic import critic_loss, train_critic
    from magc.train.data import IGNORE, CropSampler, Scene

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 5, (12, 12))
    labels = np.kron(blocks, np.ones((16, 16), np.int64)).astype(np.uint8)
    colours = np.array([[120, 110, 90], [200, 200, 210], [70, 70, 75], [30, 60, 140], [40, 130, 50]], np.float64)
    image = colours[labels].transpose(2, 0, 1) + rng.normal(0, 12, (3, 192, 192))
    image = np.clip(image, 0, 255).astype(np.uint8)
    labels[:8] = IGNORE
    scenes = [Scene("s", image, labels, labels)]
    critic = train_critic(CropSampler(scenes, 64, seed=1), tmp_path, 5, steps=150, batch=4, lr=3e-3)
    x, _, y = CropSampler(scenes, 64, seed=99).batch(8)
    with torch.no_grad():
        loss, accuracy = critic_loss(critic, x, y)
    assert accuracy > 0.9 and not any(p.requires_grad for p in critic.parameters())
    again = train_critic(CropSampler(scenes, 64, seed=1), tmp_path, 5, steps=150, batch=4, lr=3e-3)
    assert all(torch.equal(a, b) for a, b in zip(critic.state_dict().values(), again.state_dict().values()))


def test_semantic_critic_is_blind_to_pixel_scale_patterns() -> None:
    """The critic looks through its blur, so a denoiser cannot please it with grid textures
    (the first trial without the blur did exactly that); land-cover-scale changes still count."""
    from magc.train.critic import SemanticCritic

    torch.manual_seed(0)
    critic = SemanticCritic(5).eval()
    image = torch.rand(1, 3, 64, 64) * 0.5 + 0.25
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checkerboard = ((yy + xx) % 2 * 2 - 1).float() * 0.2
    blob = torch.zeros(1, 3, 64, 64)
    blob[..., 16:48, 16:48] = 0.2
    with torch.no_grad():
        base = critic(image)
        grid_change = (critic(image + checkerboard) - base).abs().max()
        blob_change = (critic(image + blob) - base).abs().max()
    assert grid_change < 0.01 * blob_change  # without the blur (or with sigma 0.3) they are of the same size


def test_semantic_critic_gives_no_verdict_on_unlabelled_crops() -> None:
    """A batch with every pixel unlabelled (255) must cost nothing, not a NaN that would
    poison the denoiser's weights."""
    from magc.train.critic import SemanticCritic, critic_loss
    from magc.train.data import IGNORE

    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss, accuracy = critic_loss(SemanticCritic(5), images * 2 - 1, torch.full((2, 32, 32), IGNORE, dtype=torch.uint8))
    loss.backward()
    assert loss.item() == 0.0 and accuracy.item() == 0.0 and torch.isfinite(images.grad).all()


def test_distilled_encoder_side_reproduces_the_teacher_and_keeps_the_rest(data_dir: Path, tmp_path: Path) -> None:
    """`magc distill-encoder` gives trained weights the preset's smaller encoder side (the
    autoencoder's encoder and the LCM analysis), trained to give the teacher's latents: every
    other tensor (map encoder, synthesis, entropy nets and tables, decoder, denoiser) is the
    teacher's bit for bit, encoder-side tensors of the teacher's shape start from the
    teacher's, and the exported weights encode and decode."""
    from magc.config import PRESET_DIR, load_preset
    from magc.models.weights import load_state
    from magc.train.distill import ENCODER_SIDE, _student_of

    torch.set_num_threads(2)
    teacher = tmp_path / "teacher.safetensors"
    assert main(["train", "--preset", "tiny-lite", "--data", str(data_dir), "--run", str(tmp_path / "run"), "--steps", "2,2",
                 "--export", str(teacher)]) == 0
    preset = json.loads((PRESET_DIR / "tiny-lite.json").read_text())
    preset["autoencoder"].update(encoder_widths=[4, 8], encoder_blocks=1)
    preset["lcm"].update(analysis_width=8, analysis_blocks=0)
    small = tmp_path / "tiny-lite-small.json"
    small.write_text(json.dumps(preset))
    student, run = tmp_path / "student.safetensors", tmp_path / "distill"
    common = ["distill-encoder", "--teacher", str(teacher), "--data", str(data_dir), "--run", str(run)]
    assert main(common + ["--preset", "lite", "--steps", "2"]) == 2  # the teacher holds another preset
    assert main(common + ["--preset", str(small), "--steps", "100", "--export", str(student)]) == 0
    logs = [json.loads(line) for line in (run / "distill.log.jsonl").read_text().splitlines()]
    assert logs[-1]["z_relative_mse"] < 0.5 * logs[0]["z_relative_mse"]
    assert logs[-1]["y_relative_mse"] < 0.5 * logs[0]["y_relative_mse"]
    before, after = load_state(teacher), load_state(student)
    encoder_side = {k for k in after if k.startswith(ENCODER_SIDE)}
    assert after["autoencoder.encoder.stem.weight"].shape[0] == 4 and before["autoencoder.encoder.stem.weight"].shape[0] == 8
    assert after["lcm.ga_4.weight"].shape[1] == 8 and before["lcm.ga_4.weight"].shape[1] == 16
    assert not any(k.startswith("lcm.ga_2.1") for k in after) and any(k.startswith("lcm.ga_2.1") for k in before)
    assert set(after) - encoder_side == {k for k in before if not k.startswith(ENCODER_SIDE)}
    assert all(torch.equal(before[k], after[k]) for k in after if k not in encoder_side)
    manifest = json.loads(student.with_name("student.manifest.json").read_text())
    assert manifest["started_from"] == str(teacher) and manifest["recipe"]["steps"] == 100
    loaded = load_codec("tiny-lite", weights=student, device="cpu")
    raster, layer = data_dir / "t2p1.tif", data_dir / "t2p1.gpkg"
    encode_raster(raster, tmp_path / "x.magc", [str(layer)], codec=loaded)
    decode_raster(tmp_path / "x.magc", tmp_path / "x.tif", [str(layer)], codec=loaded)
    assert (tmp_path / "x.tif").is_file()

    # a student that keeps the encoder's widths starts from the teacher's tensors of that shape
    preset["autoencoder"].update(encoder_widths=None, encoder_blocks=0)
    fewer = tmp_path / "tiny-lite-fewer.json"
    fewer.write_text(json.dumps(preset))
    _, warm = _student_of(teacher, load_preset(str(fewer)))
    warm_state = warm.state_dict()
    assert all(torch.equal(warm_state[k], before[k]) for k in ("autoencoder.encoder.stem.weight", "autoencoder.encoder.out.bias"))


def test_a_checkpoint_of_another_run_is_refused_with_a_reason(tmp_path: Path) -> None:
    """Resuming from a run folder whose checkpoint holds other modules (an older version of a
    command) or other shapes (another preset size) is a one-line UsageError, not a KeyError."""
    from magc.errors import UsageError
    from magc.train.loop import LoopConfig, run_loop

    def run(modules: dict[str, torch.nn.Module], steps: int) -> None:
        params = [p for m in modules.values() for p in m.parameters()]
        optimizers = {"main": torch.optim.SGD(params, lr=0.1)}
        run_loop("toy", tmp_path, LoopConfig(steps, 0.1, warmup=1, checkpoint_every=1), modules, optimizers,
                 lambda i: {"loss": sum(p.square().sum() for p in params).backward() or 0.0})

    run({"encoder": torch.nn.Linear(2, 2)}, 1)
    run({"encoder": torch.nn.Linear(2, 2)}, 2)  # the same run resumes
    with pytest.raises(UsageError, match="holds encoder; this run trains encoder_side"):
        run({"encoder_side": torch.nn.Linear(2, 2)}, 3)
    with pytest.raises(UsageError, match="another run"):
        run({"encoder": torch.nn.Linear(3, 3)}, 3)


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    """A loss that turns NaN (as sprdiff-lite stage 1 did at step 975 of a restart) stops the
    loop at once with a one-line TrainingDiverged; the checkpoint before it is untouched, where
    training used to go on for 2000 steps of NaN weights and checkpoint them."""
    from magc.errors import TrainingDiverged
    from magc.train.loop import LoopConfig, run_loop

    layer = torch.nn.Linear(2, 2)
    optimizers = {"main": torch.optim.SGD(layer.parameters(), lr=0.1)}

    def step(i: int) -> dict[str, float]:
        loss = layer.weight.square().sum() * (float("nan") if i == 5 else 1.0)
        optimizers["main"].zero_grad()
        loss.backward()
        optimizers["main"].step()
        return {"loss": loss.item(), "aux": 1.0}

    with pytest.raises(TrainingDiverged, match="stage1 diverged at step 6 .loss nan.; the checkpoint of step 4"):
        run_loop("stage1", tmp_path, LoopConfig(10, 0.1, warmup=1, checkpoint_every=2), {"net": layer}, optimizers, step)
    saved = torch.load(tmp_path / "stage1.ckpt", weights_only=True)
    assert saved["step"] == 4 and all(torch.isfinite(t).all() for t in saved["modules"]["net"].values())


def test_train_segmentation_writes_weights_and_reports_miou(data_dir: Path, tmp_path: Path, capsys) -> None:
    """`magc train-segmentation` trains, scores the val split on its labels, and writes weights the
    evaluation loads, with the printed manifest beside them (the image is both splits here)."""
    from magc.segmentation import load_segmenter

    torch.set_num_threads(2)
    item = json.loads((data_dir / "index.json").read_text())[0]
    folder = tmp_path / "data"  # a copy: the module's fixture keeps its train-only index
    folder.mkdir()
    for name in (item["image"], item["map"], item["labels"]):
        (folder / name).write_bytes((data_dir / name).read_bytes())
    (folder / "index.json").write_text(json.dumps([item, {**item, "split": "val"}]))
    weights = tmp_path / "seg.safetensors"
    code = main(["train-segmentation", "--data", str(folder), "--run", str(tmp_path / "run"), "--steps", "2",
                 "--export", str(weights)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 2 and 0.0 <= printed["val_miou_on_originals"] <= 1.0
    manifest = json.loads(weights.with_name("seg.manifest.json").read_text())
    assert manifest["val_miou_on_originals"] == printed["val_miou_on_originals"] and len(manifest["sha256"]) == 64
    assert load_segmenter(weights) is not None
