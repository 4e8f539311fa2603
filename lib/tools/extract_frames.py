"""Extract frames of a video into numbered JPEGs.

    python -m lib.tools.extract_frames VIDEO OUT_DIR [--every N] [--start SEC] [--end SEC]
        [--pattern frame%06d.jpg] [--quality 95] [--number-by source|output]

Files are numbered by the frame's index in the video (default), so gaps in the numbers show which
frames were skipped; lib.dataset.list_frames reads them back in numeric order.
"""
import argparse
import sys

from lib.cli import user_errors_exit_2
from lib.dataset import DatasetError, extract_frames, video_info


@user_errors_exit_2
def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lib.tools.extract_frames", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video", help="video file (anything OpenCV/FFmpeg reads)")
    ap.add_argument("out_dir", help="folder for the JPEGs (created)")
    ap.add_argument("--every", type=int, default=1, help="keep every N-th frame (default 1)")
    ap.add_argument("--start", type=float, default=None, help="start time in seconds")
    ap.add_argument("--end", type=float, default=None, help="end time in seconds (exclusive)")
    ap.add_argument("--pattern", default="%06d.jpg", help="file name pattern with one integer (default %%06d.jpg)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    ap.add_argument("--number-by", choices=("source", "output"), default="source",
                    help="number files by the frame index in the video (source) or 0..K-1 (output)")
    args = ap.parse_args(argv)
    if args.every < 1:
        print(f"error: --every {args.every}: must be >= 1", file=sys.stderr)
        return 2
    try:
        info = video_info(args.video)
        paths = extract_frames(args.video, args.out_dir, every=args.every, start=args.start, end=args.end,
                               pattern=args.pattern, quality=args.quality, number_by=args.number_by, progress=True)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.video}: {info['frame_count']} frames at {info['fps']:.2f} fps, {info['width']}x{info['height']}; "
          f"wrote {len(paths)} frames to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
