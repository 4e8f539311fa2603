"""The order in which a video model sees a dataset's frames: one stream per video, and the whole videos
of a split whose frames have gaps (a random split keeps one frame in five of each video).

A window or memory model tested on a split's frames alone gets neighbours several frames apart; streamed
over the whole videos (the same dataset spec without its frame list, ``whole_videos_spec``) it sees the
frames it would see on the device, and only the split's frames are scored."""
import os


def video_groups(dataset, max_frames=0):
    """[(name, [record indices in frame order])]: the snippets (each cut to its first ``max_frames`` when
    > 0), then every still image on its own."""
    index_of = {id(r): i for i, r in enumerate(dataset.records)}
    groups = []
    for name, recs in dataset.snippets().items():
        idx = [index_of[id(r)] for r in recs]
        groups.append((name, idx[:max_frames] if max_frames > 0 else idx))
    for i, rec in enumerate(dataset.records):
        if rec.video is None:
            groups.append((rec.image_id, [i]))
    return groups


def context_groups(dataset, context, max_frames=0):
    """Videos of ``context`` (the same images without the split) that hold frames of ``dataset``.

    -> (groups over context records, {context index: dataset index}); frames of ``dataset`` that no
    context video holds (not among the mapping's values) keep their own videos."""
    wanted = {os.path.abspath(r.image): i for i, r in enumerate(dataset.records)}
    groups, report = [], {}
    for name, idx in video_groups(context, max_frames):
        hits = {j: wanted[p] for j in idx for p in [os.path.abspath(context.records[j].image)] if p in wanted}
        if hits:
            groups.append((name, idx))
            report.update(hits)
    return groups, report


def stream_plan(dataset, context=None, max_frames=0):
    """[(video name, records to stream in order, [index into dataset.records, or None for a frame streamed
    only as context])]: with ``context``, every video holding a frame of ``dataset`` whole, then the frames
    of ``dataset`` it does not hold in their own videos; without, ``dataset``'s videos."""
    if context is None:
        return [(name, [dataset.records[i] for i in idx], idx) for name, idx in video_groups(dataset, max_frames)]
    groups, report = context_groups(dataset, context, max_frames)
    plan = [(name, [context.records[j] for j in idx], [report.get(j) for j in idx]) for name, idx in groups]
    covered = set(report.values())
    for name, idx in video_groups(dataset, max_frames):
        rest = [i for i in idx if i not in covered]
        if rest:
            plan.append((name, [dataset.records[i] for i in rest], rest))
    return plan
