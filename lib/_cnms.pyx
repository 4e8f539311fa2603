# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled NMS kernels used by ``lib.nms`` (project box convention: x2/y2 exclusive, no +1).

Comparisons happen in the dtype of the boxes (the threshold is cast to it), so results equal the
numpy references in ``lib.nms`` bit for bit.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from libc.math cimport exp

cnp.import_array()


def nms_sorted(floating[:, ::1] boxes, cnp.int64_t[::1] order, double iou_threshold,
               Py_ssize_t max_output=-1):
    """Greedy hard NMS over ``boxes[order]`` (order = indices by decreasing score).

    A box is suppressed when its IoU with an already kept box is strictly greater than the
    threshold. Returns the kept indices (int64) in the order they were kept. ``max_output`` >= 0
    stops after that many boxes.
    """
    cdef Py_ssize_t n = order.shape[0], i, r, write, n_cand, n_kept = 0, pos
    cdef floating thr = <floating>iou_threshold
    dtype = np.float32 if floating is float else np.float64
    keep_arr = np.empty(n, dtype=np.int64)
    if n == 0 or max_output == 0:
        return keep_arr[:0]
    cdef cnp.int64_t[::1] keep = keep_arr
    # Coordinates gathered once in score order: the inner loop then streams contiguous memory.
    x1_arr = np.empty(n, dtype=dtype)
    y1_arr = np.empty(n, dtype=dtype)
    x2_arr = np.empty(n, dtype=dtype)
    y2_arr = np.empty(n, dtype=dtype)
    area_arr = np.empty(n, dtype=dtype)
    cand_arr = np.empty(n, dtype=np.intp)
    cdef floating[::1] x1 = x1_arr, y1 = y1_arr, x2 = x2_arr, y2 = y2_arr, area = area_arr
    cdef Py_ssize_t[::1] cand = cand_arr
    cdef floating ix1, iy1, ix2, iy2, iarea, iw, ih, inter, union
    with nogil:
        for i in range(n):
            pos = order[i]
            x1[i] = boxes[pos, 0]
            y1[i] = boxes[pos, 1]
            x2[i] = boxes[pos, 2]
            y2[i] = boxes[pos, 3]
            area[i] = (x2[i] - x1[i]) * (y2[i] - y1[i])
            cand[i] = i
        n_cand = n
        while n_cand > 0:
            i = cand[0]
            keep[n_kept] = order[i]
            n_kept += 1
            if max_output > 0 and n_kept >= max_output:
                break
            ix1 = x1[i]
            iy1 = y1[i]
            ix2 = x2[i]
            iy2 = y2[i]
            iarea = area[i]
            # Survivors are compacted in place, so suppressed boxes are never visited again.
            write = 0
            for r in range(1, n_cand):
                pos = cand[r]
                iw = (ix2 if ix2 < x2[pos] else x2[pos]) - (ix1 if ix1 > x1[pos] else x1[pos])
                if iw > 0:
                    ih = (iy2 if iy2 < y2[pos] else y2[pos]) - (iy1 if iy1 > y1[pos] else y1[pos])
                    if ih > 0:
                        inter = iw * ih
                        union = iarea + area[pos] - inter
                        if union > 0 and inter / union > thr:
                            continue
                cand[write] = pos
                write += 1
            n_cand = write
    return keep_arr[:n_kept]


def soft_nms(double[:, ::1] dets, int gaussian, double sigma, double iou_threshold,
             double score_threshold):
    """Soft-NMS (Bodla et al. 2017) on float64 (N,5) dets whose scores are all >= score_threshold.

    Repeatedly selects the highest current score (ties: lowest original index), decays the others by
    ``1 - IoU`` when IoU > iou_threshold (linear) or by ``exp(-IoU^2 / sigma)`` (gaussian), and drops
    boxes whose score falls below score_threshold. Returns (kept indices in selection order, their
    final scores).
    """
    cdef Py_ssize_t n = dets.shape[0], i, j, best, n_active, k
    kept_arr = np.empty(n, dtype=np.int64)
    score_out_arr = np.empty(n, dtype=np.float64)
    if n == 0:
        return kept_arr, score_out_arr
    cdef cnp.int64_t[::1] kept = kept_arr
    cdef double[::1] score_out = score_out_arr
    idx_arr = np.arange(n, dtype=np.intp)
    score_arr = np.array(dets[:, 4], dtype=np.float64)
    area_arr = np.empty(n, dtype=np.float64)
    cdef Py_ssize_t[::1] idx = idx_arr
    cdef double[::1] score = score_arr, area = area_arr
    cdef double bx1, by1, bx2, by2, barea, iw, ih, inter, union, iou, weight, best_score
    cdef Py_ssize_t tmp_idx
    with nogil:
        for i in range(n):
            area[i] = (dets[i, 2] - dets[i, 0]) * (dets[i, 3] - dets[i, 1])
        n_active = n
        k = 0
        while n_active > 0:
            best = 0
            best_score = score[0]
            for j in range(1, n_active):
                if score[j] > best_score or (score[j] == best_score and idx[j] < idx[best]):
                    best = j
                    best_score = score[j]
            tmp_idx = idx[best]
            kept[k] = tmp_idx
            score_out[k] = best_score
            k += 1
            # Remove the selected box from the active set (move the last active one into its slot).
            n_active -= 1
            idx[best] = idx[n_active]
            score[best] = score[n_active]
            bx1 = dets[tmp_idx, 0]
            by1 = dets[tmp_idx, 1]
            bx2 = dets[tmp_idx, 2]
            by2 = dets[tmp_idx, 3]
            barea = area[tmp_idx]
            j = 0
            while j < n_active:
                i = idx[j]
                iou = 0.0
                iw = (bx2 if bx2 < dets[i, 2] else dets[i, 2]) - (bx1 if bx1 > dets[i, 0] else dets[i, 0])
                if iw > 0:
                    ih = (by2 if by2 < dets[i, 3] else dets[i, 3]) - (by1 if by1 > dets[i, 1] else dets[i, 1])
                    if ih > 0:
                        inter = iw * ih
                        union = barea + area[i] - inter
                        if union > 0:
                            iou = inter / union
                if gaussian:
                    weight = exp(-(iou * iou) / sigma)
                elif iou > iou_threshold:
                    weight = 1.0 - iou
                else:
                    weight = 1.0
                score[j] = score[j] * weight
                if score[j] < score_threshold:
                    n_active -= 1
                    idx[j] = idx[n_active]
                    score[j] = score[n_active]
                else:
                    j += 1
    return kept_arr[:k], score_out_arr[:k]


def seq_nms_paths(cnp.int64_t[::1] frame_of, double[::1] scores, cnp.int64_t[::1] pred_ptr,
                  cnp.int64_t[::1] pred_idx, cnp.int64_t[::1] supp_ptr, cnp.int64_t[::1] supp_idx,
                  int rescore_max):
    """Seq-NMS path selection for ONE class over a video (boxes flattened in frame order).

    frame_of[b]: frame of box b (non-decreasing). Box b's links to the previous frame are
    pred_idx[pred_ptr[b]:pred_ptr[b+1]] (ascending); the boxes its path membership suppresses in
    its own frame are supp_idx[supp_ptr[b]:supp_ptr[b+1]]. While a link between two alive boxes
    exists: forward dynamic programming of the best score sum of a path ending at each box (a
    predecessor is used when its sum is > 0; ties: lower index), take the global maximum (ties:
    lower index), rescore the path to its mean (or max), mark it kept and remove the suppressed
    boxes. Returns (keep uint8 (N,), new_scores (N,)); boxes never on a path nor suppressed are kept
    with their score.
    """
    cdef Py_ssize_t n = scores.shape[0], b, k, p, end, length
    keep_arr = np.zeros(n, dtype=np.uint8)
    new_scores_arr = np.array(scores, dtype=np.float64)
    alive_arr = np.ones(n, dtype=np.uint8)
    best_arr = np.empty(n, dtype=np.float64)
    back_arr = np.empty(n, dtype=np.int64)
    path_arr = np.empty(n, dtype=np.int64)
    cdef cnp.uint8_t[::1] keep = keep_arr, alive = alive_arr
    cdef double[::1] new_scores = new_scores_arr, best = best_arr
    cdef cnp.int64_t[::1] back = back_arr, path = path_arr
    cdef double gain, end_value, total, top
    cdef bint any_link
    with nogil:
        while True:
            any_link = False
            end = -1
            end_value = 0.0
            for b in range(n):
                back[b] = -1
                if not alive[b]:
                    continue
                gain = 0.0
                for k in range(pred_ptr[b], pred_ptr[b + 1]):
                    p = pred_idx[k]
                    if alive[p]:
                        any_link = True
                        if best[p] > gain:
                            gain = best[p]
                            back[b] = p
                best[b] = scores[b] + gain
                if end < 0 or best[b] > end_value:
                    end = b
                    end_value = best[b]
            if not any_link:
                break
            length = 0
            b = end
            while b >= 0:
                path[length] = b
                length += 1
                b = back[b]
            total = 0.0
            top = scores[path[0]]
            for k in range(length):
                total += scores[path[k]]
                if scores[path[k]] > top:
                    top = scores[path[k]]
            for k in range(length):
                b = path[k]
                new_scores[b] = top if rescore_max else total / length
                keep[b] = 1
                alive[b] = 0
                for p in range(supp_ptr[b], supp_ptr[b + 1]):
                    alive[supp_idx[p]] = 0
        for b in range(n):
            if alive[b]:
                keep[b] = 1
    return keep_arr, new_scores_arr
