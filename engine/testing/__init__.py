"""What tests of ScanStream and of its plugins use: a real engine in a subprocess, phantoms, peers, free ports.

The helpers are in :mod:`engine.testing.harness` and importable from here (plugin
authors' tests do); :mod:`engine.testing.pytest_plugin` turns them into fixtures,
:mod:`engine.testing.peers` starts real DICOM peers (Orthanc, a test PKI).
"""

from engine.testing.harness import (
    PHANTOM_STUDY_NODULES,
    PHANTOM_STUDY_SEED,
    TEST_MODEL_CACHE,
    TEST_PASSWORD,
    TEST_USER,
    EngineProcess,
    JobResult,
    PhantomStudy,
    StudyResults,
    add_console_user,
    dcmtk_storescu,
    engine_process,
    make_phantom_study,
    read_seg_mask,
    send_and_wait,
    storescu,
    write_config,
)

__all__ = [
    "PHANTOM_STUDY_NODULES", "PHANTOM_STUDY_SEED", "TEST_MODEL_CACHE", "TEST_PASSWORD", "TEST_USER", "EngineProcess",
    "JobResult", "PhantomStudy", "StudyResults", "add_console_user", "dcmtk_storescu", "engine_process", "make_phantom_study", "read_seg_mask", "send_and_wait",
    "storescu", "write_config",
]
