# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled NMS kernels used by ``lib.nms`` (project box convention: x2/y2 exclusive, no +1).

Comparisons happen in the dtype of the boxes (the threshold is cast to it), so results equal the
numpy references in ``lib.nms`` bit for bit.
"""
import numpy as np

cimport numpy as cnp
from cython cimport floating
from libc.math cimport exp, isfinite, sqrt
from libc.stdlib cimport free, malloc, realloc

cnp.import_array()


# Below this many boxes the plain loop is as fast as the grid.
GRID_MIN_BOXES = 64
# Low thresholds let far-apart centres suppress each other: the search window grows as 1/(2t).
GRID_MIN_THRESHOLD = 0.1


def nms_sorted(floating[:, ::1] boxes, cnp.int64_t[::1] order, double iou_threshold,
               Py_ssize_t max_output=-1, int use_grid=-1):
    """Greedy hard NMS over ``boxes[order]`` (order = indices by decreasing score).

    A box is suppressed when its IoU with an already kept box is strictly greater than the
    threshold. Returns the kept indices (int64) in the order they were kept. ``max_output`` >= 0
    stops after that many boxes. ``use_grid``: 1 = centre grid, 0 = plain loop, -1 = grid when it
    pays (>= GRID_MIN_BOXES finite boxes, threshold >= GRID_MIN_THRESHOLD); both give identical
    results.
    """
    cdef Py_ssize_t n = order.shape[0], i, pos
    dtype = np.float32 if floating is float else np.float64
    keep_arr = np.empty(n, dtype=np.int64)
    if n == 0 or max_output == 0:
        return keep_arr[:0]
    cdef cnp.int64_t[::1] keep = keep_arr
    # Coordinates gathered once in score order: the inner loops then read contiguous memory.
    coords_arr = np.empty((5, n), dtype=dtype)
    cdef floating[:, ::1] coords = coords_arr
    cdef bint finite = True
    with nogil:
        for i in range(n):
            pos = order[i]
            coords[0, i] = boxes[pos, 0]
            coords[1, i] = boxes[pos, 1]
            coords[2, i] = boxes[pos, 2]
            coords[3, i] = boxes[pos, 3]
            coords[4, i] = (coords[2, i] - coords[0, i]) * (coords[3, i] - coords[1, i])
            if not (isfinite(coords[0, i]) and isfinite(coords[1, i]) and isfinite(coords[2, i])
                    and isfinite(coords[3, i])):
                finite = False
    if use_grid < 0:
        use_grid = n >= GRID_MIN_BOXES and finite and iou_threshold >= GRID_MIN_THRESHOLD
    elif use_grid and not (finite and iou_threshold > 0):
        raise ValueError("grid NMS needs finite boxes and a threshold > 0")
    cdef Py_ssize_t n_kept
    if use_grid:
        n_kept = _nms_grid(coords, <floating>iou_threshold, max_output, &keep[0])
        if n_kept < 0:
            raise MemoryError("grid NMS could not allocate its cell lists")
    else:
        n_kept = _nms_plain(coords, <floating>iou_threshold, max_output, &keep[0])
    # keep holds sorted positions: map back to row indices
    for i in range(n_kept):
        keep[i] = order[keep[i]]
    return keep_arr[:n_kept]


cdef inline bint _suppresses(const floating* c, Py_ssize_t n, Py_ssize_t a, Py_ssize_t b,
                             floating thr) noexcept nogil:
    """IoU(a, b) > thr on rows [x1, y1, x2, y2, area] of length n. Symmetric in a and b bit for
    bit (min, max and + commute exactly)."""
    cdef floating iw, ih, inter, union
    cdef const floating* x1 = c
    cdef const floating* y1 = c + n
    cdef const floating* x2 = c + 2 * n
    cdef const floating* y2 = c + 3 * n
    iw = (x2[a] if x2[a] < x2[b] else x2[b]) - (x1[a] if x1[a] > x1[b] else x1[b])
    if iw <= 0:
        return False
    ih = (y2[a] if y2[a] < y2[b] else y2[b]) - (y1[a] if y1[a] > y1[b] else y1[b])
    if ih <= 0:
        return False
    inter = iw * ih
    union = c[4 * n + a] + c[4 * n + b] - inter
    return union > 0 and inter / union > thr


cdef Py_ssize_t _nms_plain(floating[:, ::1] c, floating thr, Py_ssize_t max_output,
                           cnp.int64_t* keep) noexcept nogil:
    """Each kept box removes what it suppresses from a candidate list compacted in place."""
    cdef Py_ssize_t n = c.shape[1], i, r, write, pos, n_cand = n, n_kept = 0
    cdef const floating* x1 = &c[0, 0]
    cdef const floating* y1 = &c[1, 0]
    cdef const floating* x2 = &c[2, 0]
    cdef const floating* y2 = &c[3, 0]
    cdef const floating* area = &c[4, 0]
    cdef floating ix1, iy1, ix2, iy2, iarea, iw, ih, inter, union
    cdef Py_ssize_t* cand = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
    if cand == NULL:
        return -1
    for i in range(n):
        cand[i] = i
    while n_cand > 0:
        i = cand[0]
        keep[n_kept] = i
        n_kept += 1
        if max_output > 0 and n_kept >= max_output:
            break
        ix1 = x1[i]
        iy1 = y1[i]
        ix2 = x2[i]
        iy2 = y2[i]
        iarea = area[i]
        write = 0
        for r in range(1, n_cand):
            pos = cand[r]
            # same arithmetic as _suppresses, with the kept box hoisted into registers
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
    free(cand)
    return n_kept


cdef double _centre_reach(double thr) noexcept nogil:
    """Bound on |centre_k - centre_j| / size_j (per axis) when IoU(k, j) > thr > 0.

    IoU > t gives iw > t * w_j and iw > t * w_k (inter <= iw * h, union >= each area), hence
    w_k < w_j / t; and iw <= (w_k + w_j) / 2 - dx. So dx < w_j * (1 - t) for t >= 1/2 and
    dx < w_j * (1 / (2t) - 1/2) for t < 1/2.
    """
    if thr >= 0.5:
        return max(1.0 - thr, 0.0)
    return 0.5 / thr - 0.5


cdef Py_ssize_t _nms_grid(floating[:, ::1] c, floating thr, Py_ssize_t max_output,
                          cnp.int64_t* keep) noexcept nogil:
    """Each box, in score order, is tested only against kept boxes whose centre lies within the
    reach (``_centre_reach``) of its own centre. Kept boxes are registered by the grid cell of
    their centre (linked lists). Equals the plain loop for thresholds > 0.
    """
    cdef Py_ssize_t n = c.shape[1], i, k, e, cx, cy, cx0, cx1, cy0, cy1, n_kept = 0, n_cells
    cdef Py_ssize_t grid_w, grid_h, max_side
    cdef const floating* coords = &c[0, 0]
    cdef double min_x = 0, min_y = 0, max_x = 0, max_y = 0, sum_w = 0, sum_h = 0
    cdef double cell_w, cell_h, span_x, span_y, centre_x, centre_y, reach_x, reach_y, w, h
    # Rounding margin: the float IoU test may pass where the exact one is marginally below thr.
    cdef double reach = _centre_reach(<double>thr * (1.0 - 1e-6)) * 1.001 + 1e-6
    cdef bint suppressed
    cdef double* centre = <double*>malloc(2 * n * sizeof(double))
    if centre == NULL:
        return -1
    for i in range(n):
        centre[i] = 0.5 * (<double>coords[i] + coords[2 * n + i])
        centre[n + i] = 0.5 * (<double>coords[n + i] + coords[3 * n + i])
        if i == 0 or centre[i] < min_x:
            min_x = centre[i]
        if i == 0 or centre[i] > max_x:
            max_x = centre[i]
        if i == 0 or centre[n + i] < min_y:
            min_y = centre[n + i]
        if i == 0 or centre[n + i] > max_y:
            max_y = centre[n + i]
        sum_w += max(<double>coords[2 * n + i] - coords[i], 0.0)
        sum_h += max(<double>coords[3 * n + i] - coords[n + i], 0.0)
    span_x = max_x - min_x
    span_y = max_y - min_y
    # Cells of about half the mean box side; at most ~n cells in all.
    max_side = <Py_ssize_t>sqrt(<double>n) + 1
    grid_w = 1 if sum_w <= 0 or span_x <= 0 else <Py_ssize_t>min(span_x / (0.5 * sum_w / n), <double>max_side)
    grid_h = 1 if sum_h <= 0 or span_y <= 0 else <Py_ssize_t>min(span_y / (0.5 * sum_h / n), <double>max_side)
    grid_w = max(grid_w, 1)
    grid_h = max(grid_h, 1)
    cell_w = span_x / grid_w if span_x > 0 else 1.0
    cell_h = span_y / grid_h if span_y > 0 else 1.0
    n_cells = grid_w * grid_h
    cdef Py_ssize_t* head = <Py_ssize_t*>malloc(n_cells * sizeof(Py_ssize_t))
    cdef Py_ssize_t* entry_next = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
    if head == NULL or entry_next == NULL:
        free(centre); free(head); free(entry_next)
        return -1
    for i in range(n_cells):
        head[i] = -1
    for i in range(n):
        w = <double>coords[2 * n + i] - coords[i]
        h = <double>coords[3 * n + i] - coords[n + i]
        suppressed = False
        if w > 0 and h > 0:  # an empty or inverted box can never be suppressed
            reach_x = w * reach
            reach_y = h * reach
            cx0 = <Py_ssize_t>max((centre[i] - reach_x - min_x) / cell_w, 0.0)
            cx1 = <Py_ssize_t>min(max((centre[i] + reach_x - min_x) / cell_w, 0.0), <double>(grid_w - 1))
            cy0 = <Py_ssize_t>max((centre[n + i] - reach_y - min_y) / cell_h, 0.0)
            cy1 = <Py_ssize_t>min(max((centre[n + i] + reach_y - min_y) / cell_h, 0.0), <double>(grid_h - 1))
            cy = cy0
            while cy <= cy1 and not suppressed:
                cx = cx0
                while cx <= cx1 and not suppressed:
                    e = head[cy * grid_w + cx]
                    while e >= 0:
                        if _suppresses(coords, n, e, i, thr):
                            suppressed = True
                            break
                        e = entry_next[e]
                    cx += 1
                cy += 1
        if suppressed:
            continue
        keep[n_kept] = i
        n_kept += 1
        if max_output > 0 and n_kept >= max_output:
            break
        cx = min(<Py_ssize_t>((centre[i] - min_x) / cell_w), grid_w - 1)
        cy = min(<Py_ssize_t>((centre[n + i] - min_y) / cell_h), grid_h - 1)
        entry_next[i] = head[cy * grid_w + cx]
        head[cy * grid_w + cx] = i
    free(centre); free(head); free(entry_next)
    return n_kept


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


def seq_nms_paths(double[::1] scores, cnp.int64_t[::1] pred_ptr,
                  cnp.int64_t[::1] pred_idx, cnp.int64_t[::1] supp_ptr, cnp.int64_t[::1] supp_idx,
                  int rescore_max):
    """Seq-NMS path selection for ONE class over a video (boxes flattened in frame order).

    Boxes are numbered frame after frame. Box b's links to the previous frame are
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
