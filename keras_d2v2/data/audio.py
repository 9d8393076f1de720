"""Speech clips as fixed-length model inputs, and the Asterisk voice prompts (real speech, offline)."""

import pathlib
import wave
import zlib

import numpy as np

ASTERISK_SOUNDS_DIR = pathlib.Path("/usr/share/asterisk/sounds")
# Debian packages asterisk-core-sounds-{en,es,fr,it,ru}-wav and asterisk-prompt-it-menardi-wav.
ASTERISK_VOICES = ("en_US_f_Allison", "es_MX_f_Allison", "fr_CA_f_June", "it_IT_f_Menardi", "it_IT_m_Carlo", "ru_RU_f_IvrvoiceRU")


def segment_clips(clips, *, num_samples, min_samples=None):
    """Cuts variable-length clips into `num_samples`-long segments for batching.

    Each clip gives its consecutive full segments; its remainder becomes one more segment,
    zero-padded to `num_samples` and marked in the padding mask, when it has at least
    `min_samples` samples (default `num_samples // 2`), and is dropped otherwise. This is the
    padded alternative to the reference's crop-to-the-shortest batching: with
    `Data2Vec2.fit({"audio": audio, "padding_mask": padding_mask})` padded samples never count.
    Masks are drawn over all frames of a segment, so keep padding a minor part of each batch.

    Args:
        clips: sequence of 1-D float waveforms.
        num_samples: int, segment length.
        min_samples: int, shortest remainder kept.

    Returns:
        `(audio, padding_mask, clip_index)`: float32 `(N, num_samples)`, bool `(N, num_samples)`
        (True = padding) and int `(N,)`, the clip each segment comes from.
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}.")
    min_samples = num_samples // 2 if min_samples is None else min_samples
    if not 1 <= min_samples <= num_samples:
        raise ValueError(f"`min_samples` must be in [1, {num_samples}], got {min_samples}.")
    audio, lengths, index = [], [], []
    for i, clip in enumerate(clips):
        clip = np.asarray(clip, dtype="float32")
        if clip.ndim != 1:
            raise ValueError(f"Clip {i} must be a 1-D mono waveform, got shape {clip.shape}.")
        for start in range(0, len(clip), num_samples):
            piece = clip[start : start + num_samples]
            if len(piece) < min_samples:
                break
            audio.append(np.pad(piece, (0, num_samples - len(piece))))
            lengths.append(len(piece))
            index.append(i)
    if not audio:
        raise ValueError(f"No clip has {min_samples} samples or more (`min_samples`).")
    padding_mask = np.arange(num_samples)[None, :] >= np.asarray(lengths)[:, None]
    return np.stack(audio), padding_mask, np.asarray(index)


def read_wav(path):
    """(mono float32 waveform in [-1, 1), sample rate) of a 16-bit PCM WAV file."""
    with wave.open(str(path)) as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported, got {8 * f.getsampwidth()}-bit.")
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels())
        return pcm.mean(axis=1).astype("float32") / 32768.0, f.getframerate()


def load_asterisk_prompts(*, root=ASTERISK_SOUNDS_DIR, voices=ASTERISK_VOICES, sample_rate=16000):
    """The Asterisk voice prompts: real recordings of 6 voices (5 speakers) in 5 languages.

    Reads every `<voice>/**/*.wav` of `voices` (default all of `ASTERISK_VOICES`) under `root`
    (8 kHz, 16-bit) and resamples it to `sample_rate` with `scipy.signal.resample_poly`. Install
    the data with
    `apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav asterisk-prompt-it-menardi-wav`
    (CC BY-SA 3.0; ~150 MB; nothing is downloaded here).

    Returns:
        dict of lists: `"audio"` (float32 waveforms), `"voice"` (index into `ASTERISK_VOICES`),
        `"language"` (`"en"`, ...), `"prompt"` (path under the voice folder, e.g. `digits/7`).
    """
    from scipy.signal import resample_poly

    root = pathlib.Path(root)
    unknown = sorted(set(voices) - set(ASTERISK_VOICES))
    if unknown:
        raise ValueError(f"Unknown Asterisk voice(s) {unknown}; available: {list(ASTERISK_VOICES)}.")
    missing = [voice for voice in voices if not (root / voice).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Asterisk prompts not found under {root} (missing {missing}); install them with "
            "`apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav asterisk-prompt-it-menardi-wav`."
        )
    data = {"audio": [], "voice": [], "language": [], "prompt": []}
    for voice in voices:
        voice_index = ASTERISK_VOICES.index(voice)
        for path in sorted((root / voice).rglob("*.wav")):
            waveform, rate = read_wav(path)
            if rate != sample_rate:
                gcd = np.gcd(rate, sample_rate)
                waveform = resample_poly(waveform, sample_rate // gcd, rate // gcd).astype("float32")
            data["audio"].append(waveform)
            data["voice"].append(voice_index)
            data["language"].append(voice[:2])
            data["prompt"].append(str(path.relative_to(root / voice).with_suffix("")))
    return data


def asterisk_segments(data, *, num_samples, held_out_percent=20):
    """The recipes' speech task: `load_asterisk_prompts()` clips as labelled segments, split by prompt.

    Each clip is cut by `segment_clips(num_samples=...)`. A prompt is held out by its name's CRC-32
    (`held_out_percent` of the names) in every voice at once, so no test segment's words were heard
    in training, in any voice.

    Returns:
        dict of arrays over segments: `"audio"` `(N, num_samples)`, `"padding_mask"` (True at
        padding), `"voice"` (index into `ASTERISK_VOICES`), `"language"` (index into the sorted
        languages of `data`), `"held_out"` (bool).
    """
    audio, padding_mask, clip = segment_clips(data["audio"], num_samples=num_samples)
    languages = sorted(set(data["language"]))
    held_out = np.array([zlib.crc32(p.encode()) % 100 < held_out_percent for p in data["prompt"]], bool)
    return {
        "audio": audio,
        "padding_mask": padding_mask,
        "voice": np.asarray(data["voice"])[clip],
        "language": np.asarray([languages.index(language) for language in data["language"]])[clip],
        "held_out": held_out[clip],
    }
