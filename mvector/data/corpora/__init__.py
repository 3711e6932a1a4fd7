"""Data-list preparation for common corpora: a speaker folder tree (:mod:`.folder`), zhvoice (:mod:`.zhvoice`),
CN-Celeb (:mod:`.cnceleb`) and VoxCeleb (:mod:`.voxceleb`), over the shared part (:mod:`.common`).

Every ``prepare_*`` function scans a corpus, checks the audio (header only by default), splits the speakers
into a training and a speaker-disjoint test set, and writes three files into ``output_dir``:

- ``train_list.txt`` and ``test_list.txt``: ``path<TAB>label`` lines, labels 0..K-1 numbered separately in
  each list, speakers sorted by name;
- ``trials.txt``: ``label enroll test`` lines (VoxCeleb format, 1 = same speaker), either the corpus's
  official trials or trials generated from the test list (balanced target / non-target);
- ``skipped.txt`` (only when something was skipped): ``path<TAB>reason`` for each unusable file.

Paths of audio inside ``output_dir`` (the list file's folder) are written relative to it when that resolves to the
same file, which is the rule every mvector list reader follows; audio outside ``output_dir`` is written with its
absolute path (``paths="inside"``, the default), so moving the list folder never breaks a line.
``paths="relative"`` writes ``../`` paths too (move the lists and the audio together), ``paths="absolute"`` only
absolute paths. Files are written atomically
(temporary file, then rename), so an interrupted run never leaves a half-written list.

>>> import tempfile, numpy as np, soundfile as sf
>>> from pathlib import Path
>>> root = Path(tempfile.mkdtemp())
>>> for spk in ["alice", "bob", "carol", "dave"]:
...     for k in range(3):
...         (root / "audio" / spk).mkdir(parents=True, exist_ok=True)
...         sf.write(str(root / "audio" / spk / f"{k}.wav"), np.zeros(800, "float32"), 16000)
>>> data = prepare_folder(root / "audio", root / "lists", test_speakers=2, seed=1)
>>> data.num_train_speakers, data.num_test_speakers, data.num_trials, data.num_target_trials
(2, 2, 12, 6)
>>> (root / "lists" / "train_list.txt").read_text().splitlines()[0].split("\\t")[1]
'0'
"""

from __future__ import annotations

import inspect
from typing import Sequence

from mvector.data.corpora.cnceleb import prepare_cnceleb
from mvector.data.corpora.common import PathLike, PreparedData, as_roots, output_folder
from mvector.data.corpora.folder import prepare_folder
from mvector.data.corpora.voxceleb import prepare_voxceleb
from mvector.data.corpora.zhvoice import prepare_zhvoice
from mvector.errors import ConfigError, check_keys
from mvector.registry import Registry

__all__ = ["CORPORA", "prepare_corpus"]

#: Corpus layouts ``create_data.py`` knows: name -> preparer(root, output_dir, **options).
CORPORA = Registry("corpus", section="create_data options")
CORPORA.add("folder", prepare_folder)
CORPORA.add("zhvoice", prepare_zhvoice)
CORPORA.add("cnceleb", prepare_cnceleb, aliases=("cn-celeb",))
CORPORA.add("voxceleb", prepare_voxceleb)


def prepare_corpus(corpus: str, root: PathLike | Sequence[PathLike], output_dir: PathLike, **options) -> PreparedData:
    """Dispatch to the ``prepare_*`` function of ``corpus``; options not accepted by it are a ConfigError.

    >>> prepare_corpus("voxceleb1", "x", "y")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mvector.errors.ConfigError: unknown corpus 'voxceleb1'; did you mean 'voxceleb'? Valid: cnceleb, ...
    """
    func = CORPORA.get_entry(corpus)
    accepted = [p for p in inspect.signature(func).parameters if p not in ("root", "output_dir")]
    check_keys(options, accepted, f"options of {func.__name__}")
    if corpus in ("folder", "zhvoice"):
        roots = as_roots(root)
        if len(roots) != 1:
            raise ConfigError(f"corpus {corpus!r} takes one root folder, got {len(roots)}")
        root = roots[0]
    output_folder(output_dir, create=False)  # a file in the way is refused before the corpus is scanned
    return func(root, output_dir, **options)
