"""Who spoke when: ``python infer_diarization.py AUDIO.wav --model_path DIR --output_dir OUT`` (see mvector diarize)."""

import sys

from mvector.cli.diarize import main

if __name__ == "__main__":
    sys.exit(main())
