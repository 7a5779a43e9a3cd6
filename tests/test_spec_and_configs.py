import pytest

from client import spec
from export import repository


def test_committed_configs_are_current():
    assert repository.check() == [], "run `python -m export.repository` and commit the result"


def test_ensemble_wires_every_step_from_earlier_outputs():
    cfg = repository.ensemble_config()
    assert [s.model_name for s in cfg.ensemble_scheduling.step] == [m.name for m in spec.STEPS]
    assert {o.name for o in cfg.output} == {t.name for t in spec.ENSEMBLE_OUTPUTS}
    crop = next(s for s in cfg.ensemble_scheduling.step if s.model_name == "crop")
    assert dict(crop.input_map) == {t.name: t.name for t in spec.CROP.inputs}
    # one backbone pass feeds both heads; the embedder also reads the crops (its colour part)
    heads = {s.model_name: dict(s.input_map) for s in cfg.ensemble_scheduling.step if s.model_name in (spec.CLASSIFIER.name, spec.EMBEDDER.name)}
    assert heads == {spec.CLASSIFIER.name: {spec.FEATURES.name: spec.FEATURES.name},
                     spec.EMBEDDER.name: {spec.FEATURES.name: spec.FEATURES.name, spec.CROPS.name: spec.CROPS.name}}


def test_whole_image_ensemble_skips_the_detector_and_the_classifier():
    whole = next(e for e in spec.ENSEMBLES if e.name == spec.WHOLE_IMAGE)
    cfg = repository.ensemble_config(whole)
    steps = [s.model_name for s in cfg.ensemble_scheduling.step]
    assert steps == [spec.PREPROCESS.name, spec.WHOLE_CROP.name, spec.BACKBONE.name, spec.EMBEDDER.name]
    pre = cfg.ensemble_scheduling.step[0]
    assert spec.DET_IMAGE.name not in pre.output_map  # an output nothing reads is not mapped
    assert [o.name for o in cfg.output] == [spec.EMBEDDINGS.name, spec.EMBEDDER_ID.name]
    files = repository.expected_files()
    assert all(f"{m.name}/config.pbtxt" in {p.as_posix() for p in files} for m in spec.MODELS)


def test_onnx_configs_use_the_onnxruntime_backend_and_spec_shapes():
    cfg = repository.model_config(spec.DETECTOR)
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [-1, 3, spec.DET_SIZE, spec.DET_SIZE]
    assert [o.name for o in cfg.output] == ["det_boxes", "det_scores"]


def test_unknown_dtype_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'x'.*FLOAT16"):
        spec.Tensor("x", "FLOAT16", (1,))


def test_a_repository_elsewhere_gets_configs_and_python_models(tmp_path):
    repository.write(tmp_path)
    assert (tmp_path / "preprocess" / "1" / "model.py").read_text() == (repository.REPOSITORY / "preprocess" / "1" / "model.py").read_text()
    contract = tmp_path / "preprocess" / "1" / repository.CONTRACT_PACKAGE
    assert (contract / "imaging.py").read_text() == (repository.CLIENT / "imaging.py").read_text()
    assert (contract / "spec.py").read_text() == (repository.CLIENT / "spec.py").read_text()
    assert repository.check(tmp_path) == [] and repository.stale_python_files(tmp_path) == []


def test_a_changed_contract_makes_the_served_copy_stale(tmp_path):
    repository.write(tmp_path)
    copy = tmp_path / "preprocess" / "1" / repository.CONTRACT_PACKAGE / "imaging.py"
    copy.write_text(copy.read_text() + "# edited\n")
    assert repository.stale_python_files(tmp_path) == [str(copy)]


def test_check_reports_a_hand_edited_config(tmp_path):
    repository.write(tmp_path)
    cfg = tmp_path / "detector" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: 320", "dims: 300", 1))
    problems = repository.check(tmp_path)
    assert len(problems) == 1 and "detector" in problems[0] and "-  dims: 300" in problems[0]


def test_gpu_profile_puts_the_networks_on_the_gpu_with_the_same_tensors():
    """configs/gpu.pbtxt (tritonserver --model-config-name=gpu): same names, dtypes and shapes as config.pbtxt,
    ONNX models on KIND_GPU with the onnxruntime backend, TensorRT FP16 only for the backbone passes,
    the Python preprocess on the CPU."""
    from tritonclient.grpc import model_config_pb2 as mc

    for m in spec.MODELS:
        cpu, gpu = repository.model_config(m), repository.gpu_model_config(m)
        assert (list(gpu.input), list(gpu.output), gpu.backend, gpu.max_batch_size) == (list(cpu.input), list(cpu.output), cpu.backend, cpu.max_batch_size)
        kinds = {g.kind for g in gpu.instance_group}
        accel = {a.name: dict(a.parameters) for a in gpu.optimization.execution_accelerators.gpu_execution_accelerator}
        if m.kind == "python":
            assert kinds == {mc.ModelInstanceGroup.KIND_CPU} and not accel
            continue
        assert kinds == {mc.ModelInstanceGroup.KIND_GPU} and gpu.backend == "onnxruntime"
        assert "intra_op_thread_count" not in gpu.parameters  # CPU threading does not apply
        if m.name in (spec.DETECTOR.name, spec.BACKBONE.name, spec.QUERY_FEATURES.name):
            assert accel["tensorrt"]["precision_mode"] == "FP16"
        elif m.name in (spec.CLASSIFIER.name, spec.EMBEDDER.name):
            assert accel["tensorrt"]["precision_mode"] == "FP32"
        else:  # the crop graphs (NonMaxSuppression, RoiAlign) stay on the CUDA provider
            assert not accel
    files = {p.as_posix() for p in repository.expected_files()}
    assert {f"{m.name}/configs/{repository.GPU_CONFIG}.pbtxt" for m in spec.MODELS} <= files
