"""Numpy renderer of the synthetic multimodal (RGB / depth / NIR) face anti-spoofing benchmark.

Internal module of :mod:`modeling_bigmoe.synthetic` (which holds the domain profiles and the public API).
numpy + Pillow only.  Everything is batched over samples: per-sample parameters are (n,1,1)
arrays that broadcast against (n,S,S) image grids.

Pipeline per domain:
  sample labels & PAI types -> render scene radiance / distance per group
  (live | print | replay | mask | partial) -> domain sensor model per modality -> uint8.
"""

import io

import numpy as np
from PIL import Image

F32 = np.float32
W_CM = 11.0  # half-width of the aligned crop at the face plane, in cm

# ----------------------------------------------------------------------------------------------
# small numpy image utilities
# ----------------------------------------------------------------------------------------------


def fnoise(rng, n, S, beta=2.0, fmin=0.0):
    """1/f^beta noise, unit std, shape (n,S,S)."""
    w = rng.standard_normal((n, S, S)).astype(F32)
    F = np.fft.rfft2(w)
    fy = np.fft.fftfreq(S)[:, None]
    fx = np.fft.rfftfreq(S)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    filt = f ** (-beta / 2.0)
    filt[f < fmin] = 0.0
    filt[0, 0] = 0.0
    out = np.fft.irfft2(F * filt, s=(S, S)).astype(F32)
    out /= out.std(axis=(-2, -1), keepdims=True) + 1e-6
    return out


def _gk(sigma):
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return (k / k.sum()).astype(F32), r


def gblur(a, sigma):
    """Separable Gaussian blur over the last two axes (reflect padding). sigma scalar."""
    if sigma <= 0.05:
        return a
    k, r = _gk(sigma)
    H, W = a.shape[-2:]
    p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(r, r), (0, 0)], mode="reflect")
    out = sum(k[i] * p[..., i : i + H, :] for i in range(2 * r + 1))
    p = np.pad(out, [(0, 0)] * (a.ndim - 2) + [(0, 0), (r, r)], mode="reflect")
    return sum(k[i] * p[..., :, i : i + W] for i in range(2 * r + 1)).astype(F32)


def resize(a, h, w):
    """Bilinear resize of the last two axes."""
    H, W = a.shape[-2:]
    ys = np.clip((np.arange(h) + 0.5) * H / h - 0.5, 0, H - 1)
    xs = np.clip((np.arange(w) + 0.5) * W / w - 0.5, 0, W - 1)
    y0 = np.floor(ys).astype(int)
    y1 = np.minimum(y0 + 1, H - 1)
    wy = (ys - y0).astype(F32)[:, None]
    x0 = np.floor(xs).astype(int)
    x1 = np.minimum(x0 + 1, W - 1)
    wx = (xs - x0).astype(F32)[None, :]
    top = a[..., y0, :]
    bot = a[..., y1, :]
    rows = top * (1 - wy) + bot * wy
    return (rows[..., x0] * (1 - wx) + rows[..., x1] * wx).astype(F32)


def lowres(a, frac, extra_blur=0.0):
    """Emulate a sensor with native resolution frac*S that is resampled to S."""
    S = a.shape[-1]
    if frac >= 0.999:
        return gblur(a, extra_blur)
    m = max(8, int(round(S * frac)))
    b = gblur(a, 0.45 / frac + extra_blur)
    return resize(resize(b, m, m), S, S)


def jpeg(arr_u8, q):
    """arr_u8: (n,S,S) or (n,S,S,3) uint8 -> JPEG round trip at quality q (per-sample array)."""
    out = np.empty_like(arr_u8)
    for i in range(arr_u8.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(arr_u8[i]).save(buf, "JPEG", quality=int(q[i]))
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf))
    return out


def col(v):
    """per-sample scalar array (n,) -> (n,1,1)"""
    return np.asarray(v, F32)[:, None, None]


def srgb2lin(c):
    return np.asarray(c, F32) ** 2.2


# ----------------------------------------------------------------------------------------------
# identity / pose / lighting sampling
# ----------------------------------------------------------------------------------------------

HAIR_RGB = srgb2lin(
    [
        [0.07, 0.06, 0.05],
        [0.20, 0.13, 0.09],
        [0.38, 0.26, 0.16],
        [0.78, 0.65, 0.42],
        [0.62, 0.61, 0.60],
        [0.52, 0.24, 0.11],
    ]
)
HAIR_NIR = np.array([0.22, 0.30, 0.40, 0.62, 0.58, 0.48], F32)  # eumelanin absorbs less in NIR
IRIS_RGB = srgb2lin([[0.32, 0.19, 0.09], [0.13, 0.09, 0.06], [0.36, 0.50, 0.66], [0.36, 0.46, 0.30]])
SKIN_LIGHT = srgb2lin([0.90, 0.72, 0.62])
SKIN_DARK = srgb2lin([0.36, 0.22, 0.15])


def sample_identity(rng, n, dom, neutral=False, base=None):
    """Sample face-shape / appearance / session parameters; ``base`` (per-sample subject table rows)
    overrides the intrinsic (identity) keys so that one subject looks the same in every video."""

    def u(lo, hi):
        return rng.uniform(lo, hi, n).astype(F32)

    P = dict(
        ax=u(0.60, 0.73),
        ay=u(0.86, 0.98),
        yc=u(-0.02, 0.06),
        az=u(0.62, 0.82),
        jaw=u(0.3, 1.0),
        ex=u(0.27, 0.33),
        ey=u(-0.17, -0.07),
        socket=u(0.06, 0.12),
        eyeball=u(0.02, 0.04),
        eye_open=u(0.5, 1.0),
        brow=u(0.02, 0.06),
        yn=u(0.15, 0.25),
        nose_h=u(0.13, 0.26),
        nose_tip=u(0.02, 0.06),
        cheek=u(0.03, 0.08),
        ym=u(0.44, 0.54),
        mw=u(0.16, 0.24),
        lip=u(0.03, 0.06),
        chin=u(0.03, 0.07),
        smile=(rng.beta(1.2, 3.0, n) * (0 if neutral else 1)).astype(F32),
        open=(rng.beta(1.0, 6.0, n) * 0.4 * (0 if neutral else 1)).astype(F32),
        gx=u(-0.012, 0.012),
        gy=u(-0.006, 0.006),
        hairline=u(-0.78, -0.45),
        longhair=(rng.random(n) < 0.35).astype(F32),
        hair_vol=u(0.03, 0.12),
        melanin=rng.beta(*dom["melanin_beta"], n).astype(F32),
        redness=u(-0.04, 0.08),
        hair_c=rng.choice(6, n, p=dom["hair_p"]),
        iris_c=rng.choice(4, n, p=[0.45, 0.3, 0.15, 0.1]),
        brow_dark=u(0.35, 0.85),
        beard=(rng.random(n) < 0.12).astype(F32),
        glasses=(rng.random(n) < dom.get("p_glasses", 0.12)).astype(F32),
        tex=u(0.6, 1.4),
    )
    # melanin also darkens hair/iris on average
    dark = rng.random(n) < P["melanin"]
    P["hair_c"] = np.where(dark & (P["hair_c"] >= 2), rng.choice(2, n), P["hair_c"])
    P["iris_c"] = np.where(dark, rng.choice(2, n), P["iris_c"])
    for key, v in P.items():
        if v.dtype.kind == "f":
            P[key] = v.reshape(-1, 1, 1)
    if base is not None:
        for key in INTRINSIC_KEYS:
            P[key] = base[key]
    return P


def sample_pose(rng, n, dom):
    def u(lo, hi):
        return rng.uniform(lo, hi, n).astype(F32)

    yaw, pitch, roll = dom["pose_deg"]
    return dict(
        yaw=np.deg2rad(u(-yaw, yaw)),
        pitch=np.deg2rad(u(-pitch, pitch)),
        roll=np.deg2rad(u(-roll, roll)),
        k=u(0.9, 1.08),
        tx=u(-0.04, 0.04),
        ty=u(-0.04, 0.05),
        dist=u(*dom["dist_cm"]),
    )


def temp_rgb(t):
    """t in [0,1]: warm tungsten -> cool daylight, as linear RGB multipliers (n,3)."""
    warm = np.array([1.0, 0.74, 0.48], F32)
    cool = np.array([0.92, 0.98, 1.08], F32)
    return warm[None] * (1 - t[:, None]) + cool[None] * t[:, None]


def sample_light(rng, n, dom):
    def u(lo, hi):
        return rng.uniform(lo, hi, n).astype(F32)

    az = u(0, 2 * np.pi)
    el = np.deg2rad(u(0, dom["light_spread_deg"]))
    ldir = np.stack([np.sin(el) * np.cos(az), -np.abs(np.sin(el) * np.sin(az)) * 0.8 - 0.1, np.cos(el)], 1)
    ldir /= np.linalg.norm(ldir, axis=1, keepdims=True)
    return dict(
        amb=u(*dom["ambient"]),
        key=u(*dom["key"]),
        ldir=ldir.astype(F32),
        color=temp_rgb(u(*dom["cct"])),
        amb_color=temp_rgb(u(*dom["cct"])),
        ir_amb=u(*dom["ir_ambient"]),
    )


# ----------------------------------------------------------------------------------------------
# parametric face: height field in head coordinates + region maps
# ----------------------------------------------------------------------------------------------


def head_height(x, y, P):
    def G(cx, cy, sx, sy):
        return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))

    ax = P["ax"] * (1 - P["jaw"] * np.clip(y - 0.2, 0, None) ** 2)
    e = 1 - (x / ax) ** 2 - ((y - P["yc"]) / P["ay"]) ** 2
    h = P["az"] * np.sqrt(np.clip(e, 0, None))
    ex, ey = P["ex"], P["ey"]
    h = h - P["socket"] * (G(-ex, ey, 0.12, 0.08) + G(ex, ey, 0.12, 0.08))
    h += P["eyeball"] * (G(-ex, ey, 0.055, 0.035) + G(ex, ey, 0.055, 0.035))
    h += P["brow"] * (G(-ex, ey - 0.13, 0.15, 0.045) + G(ex, ey - 0.13, 0.15, 0.045))
    yn = P["yn"]
    t = np.clip((y - ey + 0.02) / (yn - ey + 0.02), 0, 1)
    below = np.exp(-0.5 * (np.clip(y - yn, 0, None) / 0.035) ** 2)
    h += P["nose_h"] * t**1.4 * np.exp(-0.5 * (x / (0.045 + 0.05 * t)) ** 2) * below
    h += P["nose_tip"] * G(0, yn, 0.055, 0.045)
    h += 0.3 * P["nose_h"] * (G(-0.085, yn + 0.015, 0.04, 0.035) + G(0.085, yn + 0.015, 0.04, 0.035))
    cy = 0.14 - 0.04 * P["smile"]
    h += (P["cheek"] + 0.03 * P["smile"]) * (G(-0.33, cy, 0.12, 0.1) + G(0.33, cy, 0.12, 0.1))
    gap = P["open"] * 0.12
    yslit = P["ym"] - 0.6 * P["smile"] * x**2 / P["mw"]
    xw = np.exp(-0.5 * (x / (P["mw"] * 0.8)) ** 4)
    lips = np.exp(-0.5 * ((y - (yslit - 0.022 - gap / 2)) / 0.022) ** 2) + np.exp(
        -0.5 * ((y - (yslit + 0.028 + gap / 2)) / 0.026) ** 2
    )
    h += P["lip"] * xw * lips
    h -= (0.015 + 0.6 * gap) * xw * np.exp(-0.5 * ((y - yslit) / (0.008 + 0.5 * gap)) ** 2)
    h += P["chin"] * G(0, 0.8, 0.13, 0.07)
    return h, e > 0, dict(lips=np.clip(xw * lips, 0, 1), yslit=yslit, gap=gap)


def face_regions(x, y, P, aux):
    ex, ey = P["ex"], P["ey"]
    regs = {}
    eo = np.zeros_like(x)
    iris = np.zeros_like(x)
    pupil = np.zeros_like(x)
    brow = np.zeros_like(x)
    for s in (-1, 1):
        dx = x - s * ex
        eo = np.maximum(eo, ((dx / 0.07) ** 2 + ((y - ey) / (0.03 * P["eye_open"])) ** 2 < 1))
        r2 = (dx - P["gx"]) ** 2 + (y - ey - P["gy"]) ** 2
        iris = np.maximum(iris, r2 < 0.03**2)
        pupil = np.maximum(pupil, r2 < 0.012**2)
        yb = ey - 0.115 + 2.0 * (dx + s * 0.02) ** 2
        brow = np.maximum(brow, np.exp(-0.5 * ((y - yb) / 0.016) ** 2) * (np.abs(dx) < 0.11))
    regs["eye"] = eo
    regs["iris"] = iris * eo
    regs["pupil"] = pupil * eo
    regs["brow"] = brow
    regs["lips"] = aux["lips"]
    hl = P["hairline"] + 0.35 * (x / P["ax"]) ** 2
    side = P["longhair"] * (np.abs(x) > P["ax"] * 0.82) * (y < 0.35)
    regs["hair_on_face"] = np.clip((y < hl).astype(F32) + side, 0, 1)
    beard_zone = ((y > P["ym"] - 0.08) & (np.abs(x) < P["ax"] * 0.9)) | (
        (y > P["yn"] + 0.04) & (y < P["ym"] - 0.03) & (np.abs(x) < 0.15)
    )
    regs["beard"] = P["beard"] * beard_zone * (1 - aux["lips"])
    return regs


# ----------------------------------------------------------------------------------------------
# projection (head coords <-> image coords) and live-face rendering
# ----------------------------------------------------------------------------------------------


def image_to_head(X, Y, P, pose, iters=4):
    """Inverse orthographic projection of a yawed/pitched/rolled height field (fixed point)."""
    cr, sr = np.cos(pose["roll"]), np.sin(pose["roll"])
    cr, sr = col(cr), col(sr)
    k, tx, ty = col(pose["k"]), col(pose["tx"]), col(pose["ty"])
    Xr = ((X - tx) * cr + (Y - ty) * sr) / k
    Yr = (-(X - tx) * sr + (Y - ty) * cr) / k
    cy_, sy_ = col(np.cos(pose["yaw"])), col(np.sin(pose["yaw"]))
    cp, sp = col(np.cos(pose["pitch"])), col(np.sin(pose["pitch"]))
    x, y = Xr / cy_, Yr / cp
    for _ in range(iters):
        z, inside, aux = head_height(x, y, P)
        z1 = -x * sy_ + z * cy_
        x = (Xr - z * sy_) / cy_
        y = (Yr + z1 * sp) / cp
    z, inside, aux = head_height(x, y, P)
    z1 = -x * sy_ + z * cy_
    D = (y * sp + z1 * cp) * k  # height toward camera, image units
    return x, y, z, D, inside, aux


def head_to_image(x, y, z, pose):
    """Forward transform for a few points (arrays of shape (n,...))."""
    sh = (-1,) + (1,) * (np.ndim(x) - 1)
    cy_, sy_ = np.cos(pose["yaw"]).reshape(sh), np.sin(pose["yaw"]).reshape(sh)
    cp, sp = np.cos(pose["pitch"]).reshape(sh), np.sin(pose["pitch"]).reshape(sh)
    cr, sr = np.cos(pose["roll"]).reshape(sh), np.sin(pose["roll"]).reshape(sh)
    k = pose["k"].reshape(sh)
    x1 = x * cy_ + z * sy_
    z1 = -x * sy_ + z * cy_
    y2 = y * cp - z1 * sp
    z2 = y * sp + z1 * cp
    X = (x1 * cr - y2 * sr) * k + pose["tx"].reshape(sh)
    Y = (x1 * sr + y2 * cr) * k + pose["ty"].reshape(sh)
    return X, Y, z2 * k


def normals_from(D, S):
    dy, dx = np.gradient(D, 2.0 / S, axis=(-2, -1))
    nz = np.ones_like(D)
    nrm = np.sqrt(dx**2 + dy**2 + 1)
    return -dx / nrm, -dy / nrm, nz / nrm


def ambient_occlusion(D, S):
    b = gblur(D, S / 16.0)
    return np.exp(-6.0 * np.clip(b - D, 0, None)).astype(F32)


def live_layers(rng, X, Y, P, pose, dom, bg):
    """Geometry + albedo layers of a live head in front of a background. Returns dict of maps."""
    n, S = X.shape[0], X.shape[-1]
    x, y, _z, D, inside, aux = image_to_head(X, Y, P, pose)
    regs = face_regions(x, y, P, aux)
    # hair shell (volume around the skull) and neck
    ax, ay, yc = P["ax"], P["ay"], P["yc"]
    hl = P["hairline"] + 0.35 * (x / ax) ** 2
    e_sh = 1 - (x / (ax * 1.12)) ** 2 - ((y - yc + 0.03) / (ay * 1.07)) ** 2
    hair_zone = (e_sh > 0) & ((y < hl) | ((P["longhair"] > 0) & (np.abs(x) > ax * 0.8) & (y < 0.45)))
    hair = hair_zone & ((~inside) | (regs["hair_on_face"] > 0))
    Dh = np.where(
        inside,
        D + P["hair_vol"] * col(pose["k"]) * 0.5,
        P["az"] * 0.85 * np.sqrt(np.clip(e_sh, 0, None)) * col(pose["k"]),
    )
    neck = (
        (~inside)
        & (~hair)
        & (np.abs(X - col(pose["tx"])) < 0.42 * col(pose["k"]))
        & (Y > col(pose["ty"]) + 0.45)
    )
    Dn = np.full_like(D, 0.0) + P["az"] * 0.15
    fg = inside | hair | neck
    Dface = np.where(hair, np.maximum(Dh, D * inside), np.where(inside, D, np.where(neck, Dn, -9.0)))
    # albedo (linear RGB, channel-first) and NIR albedo
    mel = P["melanin"]
    skin = (
        SKIN_LIGHT[None, :, None, None] * (1 - mel[:, None]) + SKIN_DARK[None, :, None, None] * mel[:, None]
    )
    red = P["redness"][:, None] * np.array([1.0, -0.5, -0.6], F32)[None, :, None, None]
    tex = P["tex"] * (0.07 * fnoise(rng, n, S, 2.2) + 0.035 * fnoise(rng, n, S, 0.5))
    alb = skin * (1 + red) * (1 + tex[:, None])
    hair_rgb = HAIR_RGB[P["hair_c"]][:, :, None, None]
    lipc = np.array([1.05, 0.62, 0.68], F32)[None, :, None, None]
    alb = alb * (1 + (lipc - 1) * regs["lips"][:, None] * 0.9)
    bw = (regs["brow"] * P["brow_dark"])[:, None]
    alb = alb * (1 - bw) + hair_rgb * bw
    bd = (regs["beard"] * 0.45)[:, None]
    alb = alb * (1 - bd) + hair_rgb * bd
    sclera = srgb2lin([0.86, 0.83, 0.79])[None, :, None, None]
    iris_rgb = IRIS_RGB[P["iris_c"]][:, :, None, None]
    eye = regs["eye"][:, None]
    iris = regs["iris"][:, None]
    pupil = regs["pupil"][:, None]
    alb = alb * (1 - eye) + eye * (sclera * (1 - iris) + iris * (iris_rgb * (1 - pupil) + 0.01 * pupil))
    alb = np.where(hair[:, None], hair_rgb * (1 + 0.15 * fnoise(rng, n, S, 0.8)[:, None]), alb)
    alb = np.where(neck[:, None], skin * 0.85, alb)
    # NIR albedo: higher, flatter, melanin-insensitive skin; NIR-bright iris; bright/dark pupil
    sk_nir = (0.60 - 0.16 * mel) * dom["ir_skin_scale"]
    nir = sk_nir * (1 + 0.3 * tex)
    nir = nir * (1 - regs["lips"] * 0.05)
    hair_nir = col(HAIR_NIR[P["hair_c"]])
    bwn = regs["brow"] * P["brow_dark"] * 0.6
    nir = nir * (1 - bwn) + hair_nir * bwn
    nir = nir * (1 - regs["beard"] * 0.3) + hair_nir * regs["beard"] * 0.3
    pupil_nir = dom["bright_pupil"]
    nir = nir * (1 - regs["eye"]) + regs["eye"] * (
        0.55 * (1 - regs["iris"]) + regs["iris"] * (0.42 * (1 - regs["pupil"]) + pupil_nir * regs["pupil"])
    )
    nir = np.where(hair, hair_nir * (1 + 0.15 * fnoise(rng, n, S, 0.8)), nir)
    nir = np.where(neck, sk_nir * 0.9, nir)
    L = dict(
        D=Dface,
        fg=fg,
        alb=alb.astype(F32),
        nir=nir.astype(F32),
        skin=(inside & ~hair) | neck,
        face=inside.copy(),
        hair=hair,
        ks=np.where(inside & ~hair, F32(0.06), F32(0.02)),
        shin=F32(18.0),
        sss=True,
    )
    return composite_bg(L, bg)


def composite_bg(L, bg):
    fg = L["fg"]
    L["D"] = np.where(fg, L["D"], bg["D"])
    L["alb"] = np.where(fg[:, None], L["alb"], bg["alb"])
    L["nir"] = np.where(fg, L["nir"], bg["nir"])
    L["ks"] = np.where(fg, L["ks"], F32(0.0))
    return L


def sample_background(rng, n, S, dom):
    base = srgb2lin(rng.uniform(0.15, 0.85, (n, 3)))
    sat = rng.uniform(0.1, 0.6, (n, 1))
    base = base * sat + base.mean(1, keepdims=True) * (1 - sat)
    tex = 1 + 0.25 * fnoise(rng, n, S, 3.0)[:, None]
    alb = (base[:, :, None, None] * tex).astype(F32)
    d_bg = rng.uniform(*dom["bg_cm"], n).astype(F32)
    return dict(
        alb=alb, nir=col(rng.uniform(0.3, 0.8, n)) * (1 + 0.1 * fnoise(rng, n, S, 3.0)), D_cm=col(d_bg)
    )


# ----------------------------------------------------------------------------------------------
# shading (visible + active NIR)
# ----------------------------------------------------------------------------------------------


def shade(L, light, pose, dom, S, rng, micro=0.0, facet=0):
    """Produce linear RGB radiance, NIR radiance and distance (cm) from layer maps."""
    D = L["D"]
    dist = col(pose["dist"]) - D * W_CM
    if "dist_override" in L:
        dist = np.where(L["fg"], dist, L["dist_override"])
    Dn = D
    if facet:
        # piecewise-planar paper-craft: average depth gradient over facet cells
        Dn = resize(resize(D, S // facet, S // facet), S, S)
    nx, ny, nz = normals_from(np.where(L["fg"], Dn, Dn), S)
    if facet:
        c = S // facet
        rp = -(-S // c)
        fx, fy, fz = [
            np.repeat(np.repeat(resize(a, c, c), rp, -2), rp, -1)[..., :S, :S] for a in (nx, ny, nz)
        ]
        nx, ny, nz = 0.5 * (nx + fx), 0.5 * (ny + fy), 0.5 * (nz + fz)
        nrm = np.sqrt(nx**2 + ny**2 + nz**2)
        nx, ny, nz = nx / nrm, ny / nrm, nz / nrm
    if micro > 0:
        nx = nx + micro * fnoise(rng, D.shape[0], S, 0.3)
        ny = ny + micro * fnoise(rng, D.shape[0], S, 0.3)
        nrm = np.sqrt(nx**2 + ny**2 + nz**2)
        nx, ny, nz = nx / nrm, ny / nrm, nz / nrm
    ao = ambient_occlusion(D, S)
    # perspective view direction (camera at the origin): flat mirrors give a single hot-spot, not a flat glow
    g = np.linspace(-1 + 1 / S, 1 - 1 / S, S, dtype=F32)
    vx = -g[None, None, :] * W_CM / dist
    vy = -g[None, :, None] * W_CM / dist
    vn = np.sqrt(vx**2 + vy**2 + 1)
    ndv_p = np.clip((nx * vx + ny * vy + nz) / vn, 0, None)
    ldir = light["ldir"]
    ndl = np.clip(nx * col(ldir[:, 0]) + ny * col(ldir[:, 1]) + nz * col(ldir[:, 2]), 0, None)
    hv = ldir + np.array([0, 0, 1], F32)
    hv /= np.linalg.norm(hv, axis=1, keepdims=True)
    ndh = np.clip(nx * col(hv[:, 0]) + ny * col(hv[:, 1]) + nz * col(hv[:, 2]), 0, None)
    diff = (
        col(light["amb"])[:, None] * ao[:, None] * light["amb_color"][:, :, None, None]
        + (col(light["key"]) * ndl)[:, None] * light["color"][:, :, None, None]
    )
    spec = (L["ks"] * col(light["key"]) * ndh ** L["shin"])[:, None] * light["color"][:, :, None, None]
    rgb = L["alb"] * diff + spec
    if "emit" in L:  # screens emit light
        rgb = rgb + L["emit"]
    # active NIR: co-located illuminator, inverse-square falloff, plus ambient NIR
    ref = dom["ir_ref_cm"]
    ndv = ndv_p
    irr = (ref / dist) ** 2 * ndv
    diff_ir = L["nir"] * (irr + col(light["ir_amb"]) * ao)
    if L.get("sss", False):  # skin subsurface scattering softens NIR shading
        diff_ir = np.where(L["skin"], gblur(diff_ir, S / 64.0 * 1.2), diff_ir)
    ks_ir = L.get("ks_ir", L["ks"] * 1.5)
    shin_ir = L.get("shin_ir", L["shin"])
    ir = diff_ir + ks_ir * (ref / dist) ** 2 * ndv**shin_ir
    if "emit_ir" in L:
        ir = ir + L["emit_ir"]
    return rgb.astype(F32), ir.astype(F32), dist.astype(F32)


def tonemap(rgb):
    return np.clip(rgb, 0, 1) ** (1 / 2.2)


# ----------------------------------------------------------------------------------------------
# eyeglasses (live confounder) -- applied to layers
# ----------------------------------------------------------------------------------------------


def add_glasses(L, P, pose, X, Y, on):
    if not on.any():
        return L
    pts_x = np.stack([-P["ex"].ravel(), P["ex"].ravel()], 1)
    pts_y = np.stack([P["ey"].ravel(), P["ey"].ravel()], 1)
    Xe, Ye, _ = head_to_image(pts_x, pts_y, np.full_like(pts_x, 0.78), pose)
    k = col(pose["k"])
    rim = np.zeros_like(X)
    lens = np.zeros_like(X)
    for j in range(2):
        r = np.sqrt(
            ((X - Xe[:, j, None, None]) / (0.15 * k)) ** 2 + ((Y - Ye[:, j, None, None]) / (0.1 * k)) ** 2
        )
        rim = np.maximum(rim, (np.abs(r - 1) < 0.12))
        lens = np.maximum(lens, r < 0.95)
    on3 = col(on.astype(F32))
    rim = rim * on3
    lens = lens * on3
    L["alb"] = L["alb"] * (1 - rim[:, None]) + 0.02 * rim[:, None]
    L["alb"] = L["alb"] * (1 - 0.1 * lens[:, None])
    L["nir"] = L["nir"] * (1 - rim) + 0.15 * rim
    L["lens"] = lens  # depth sensors struggle on lenses; NIR glint added in sensor stage
    L["glint"] = lens * np.exp(
        -0.5
        * (
            (
                (X - Xe[:, :1, None].mean(1, keepdims=True)) ** 2
                + (Y - Ye[:, :1, None].mean(1, keepdims=True)) ** 2
            )
            / 0.0004
        )
    )
    L["D"] = np.where(rim > 0, L["D"] + 0.08, L["D"])
    return L


# ----------------------------------------------------------------------------------------------
# presentation attack instruments
# ----------------------------------------------------------------------------------------------


def source_photo(rng, X, Y, dom_src, S, base=None):
    """A photo of a bona fide face (identity ``base`` if given): display-referred RGB in [0,1] and region info."""
    n = X.shape[0]
    P = sample_identity(rng, n, dom_src, base=base)
    pose = sample_pose(rng, n, dom_src)
    pose["k"] = pose["k"] * rng.uniform(0.95, 1.05, n).astype(F32)
    light = sample_light(rng, n, dom_src)
    bg = sample_background(rng, n, S, dom_src)
    bg["D"] = np.full((n, S, S), -5.0, F32)
    L = live_layers(rng, X, Y, P, pose, dom_src, bg)
    rgb, _, _ = shade(L, light, pose, dom_src, S, rng, micro=0.05)
    expo = rng.uniform(0.8, 1.4, n).astype(F32)
    photo = tonemap(rgb * col(expo)[:, None])
    P["_face"] = L["face"]
    P["_fg"] = L["fg"]
    return photo, P, pose


def plane_depth(rng, n, X, Y, dom, bend_p=0.0):
    def u(lo, hi):
        return rng.uniform(lo, hi, n).astype(F32)

    gx, gy = u(-0.35, 0.35), u(-0.25, 0.25)  # tilt (image-units depth per image unit)
    bend = np.where(rng.random(n) < bend_p, u(0.15, 0.6), 0).astype(F32)
    D = col(gx) * X + col(gy) * Y - col(bend) * X**2 + col(u(0.3, 0.6))
    return D, bend > 0


def print_transfer(rng, photo, art=1.0):
    """Printing: gamut/contrast compression, ink cast, halftone, paper texture. Returns reflectance."""
    n, _, S, _ = photo.shape

    def u(lo, hi):
        return col(rng.uniform(lo, hi, n))[:, None]

    lum = photo.mean(1, keepdims=True)
    sat = 1 - art * u(0.05, 0.45)
    p = lum + (photo - lum) * sat
    black, white = art * u(0.02, 0.12), 1 - art * u(0.06, 0.28)
    p = black + (white - black) * p ** u(0.85, 1.25)
    p = p * (1 + rng.uniform(-0.06, 0.06, (n, 3, 1, 1)).astype(F32))
    # halftone screen (mostly destroyed by the capture optics at low resolution)
    f = rng.uniform(0.25, 0.45, n)
    th = rng.uniform(0, np.pi, n)
    yy, xx = np.mgrid[0:S, 0:S].astype(F32)
    ht = np.cos(2 * np.pi * col(f) * (xx * col(np.cos(th)) + yy * col(np.sin(th)))) * np.cos(
        2 * np.pi * col(f) * (-xx * col(np.sin(th)) + yy * col(np.cos(th)))
    )
    p = p * (1 + art * u(0.0, 0.12) * ht[:, None] * (1 - p))
    p = p * (1 + 0.03 * fnoise(rng, n, S, 1.0)[:, None])
    refl = np.clip(p, 0.01, 1) ** 2.2  # to linear reflectance
    ink = 1 - lum[:, 0]  # ink coverage proxy
    return refl.astype(F32), ink.astype(F32)


def group_print(rng, X, Y, dom, S, cut=False, wrap=False, subj=None):
    n = X.shape[0]
    bg = sample_background(rng, n, S, dom)
    photo, Ps, pose_s = source_photo(rng, X, Y, dom, S, base=subj)
    refl, ink = print_transfer(rng, photo, dom["art"])
    D, _bent = plane_depth(rng, n, X, Y, dom, bend_p=dom["bend_p"])
    glossy = rng.random(n) < dom["glossy_p"]
    ink_nir = rng.uniform(0.03, 0.85, n).astype(F32)  # dye inkjet ~transparent ... carbon/laser absorbs
    paper_nir = rng.uniform(0.65, 0.92, n).astype(F32)
    L = dict(
        D=D,
        fg=np.ones_like(D, bool),
        alb=refl,
        nir=col(paper_nir) * (1 - col(ink_nir) * ink),
        ks=np.where(col(glossy) > 0, F32(0.25), F32(0.03)) * np.ones_like(D),
        shin=F32(40.0),
        skin=np.zeros_like(D, bool),
    )
    L["ks_ir"] = L["ks"] * 2.0
    L["shin_ir"] = F32(60.0)
    # paper edge visible sometimes (background beyond the sheet)
    edge = rng.random(n) < 0.3
    ex = rng.uniform(0.75, 0.98, n)
    outside = (np.abs(X) > col(ex)) & col(edge.astype(F32)).astype(bool)
    L["fg"] = ~outside
    bg["D"] = np.full((n, S, S), -5.0, F32)
    L = composite_bg(L, bg)
    L["dist_override"] = np.broadcast_to(bg["D_cm"], D.shape)
    L["face"] = Ps["_face"]
    if wrap:  # sheet wrapped over the attacker's head: smooth face-like relief, paper materials
        Pw = sample_identity(rng, n, dom, neutral=True)
        W = live_layers(
            rng, X, Y, Pw, dict(pose_s), dom, dict(alb=bg["alb"], nir=bg["nir"], D=np.full_like(D, -5.0))
        )
        Dw = gblur(np.where(W["fg"], W["D"], W["D"][W["fg"]].min() if W["fg"].any() else 0), 2.5 * S / 64)
        # the photo is cut along its head outline before wrapping: no photo background on the sheet
        sheet = W["fg"] & Ps["_fg"] & (np.abs(X) < 0.95)
        L["D"] = np.where(sheet, Dw + 0.02, bg["D"])
        L["fg"] = sheet
        L["alb"] = np.where(sheet[:, None], refl, bg["alb"])
        L["nir"] = np.where(sheet, L["nir"], bg["nir"])
    if cut:  # CASIA-SURF-style: eyes / nose / mouth cut out, attacker's real face behind
        Pw = sample_identity(rng, n, dom)
        pose_w = dict(pose_s)
        pose_w["k"] = pose_s["k"] * rng.uniform(0.95, 1.08, n).astype(F32)
        W = live_layers(
            rng, X, Y, Pw, pose_w, dom, dict(alb=bg["alb"], nir=bg["nir"], D=np.full_like(D, -5.0))
        )
        which = rng.random((n, 3)) < 0.6
        which[~which.any(1), rng.integers(0, 3)] = True
        xs = np.stack([-Ps["ex"].ravel(), Ps["ex"].ravel(), np.zeros(n), np.zeros(n)], 1)
        ys = np.stack([Ps["ey"].ravel(), Ps["ey"].ravel(), Ps["yn"].ravel(), Ps["ym"].ravel()], 1)
        Xc, Yc, _ = head_to_image(xs, ys, np.full_like(xs, 0.7), pose_s)
        hole = np.zeros_like(X, bool)
        for j, (rx, ry, w) in enumerate(
            [(0.11, 0.065, 0), (0.11, 0.065, 0), (0.09, 0.12, 1), (0.17, 0.075, 2)]
        ):
            m = ((X - Xc[:, j, None, None]) / rx) ** 2 + ((Y - Yc[:, j, None, None]) / ry) ** 2 < 1
            hole |= m & col(which[:, w].astype(F32)).astype(bool)
        offset = col(rng.uniform(0.05, 0.3, n))
        Dw = W["D"] + (L["D"] - offset - W["D"].max(axis=(1, 2), keepdims=True))
        L["D"] = np.where(hole, Dw, L["D"])
        L["alb"] = np.where(hole[:, None], W["alb"], L["alb"])
        L["nir"] = np.where(hole, W["nir"], L["nir"])
        L["ks"] = np.where(hole, W["ks"], L["ks"])
        L["ks_ir"] = np.where(hole, W["ks"] * 1.5, L["ks_ir"])
        L["skin"] = hole & W["skin"]
        L["sss"] = True
    return L, dict(src_id_P=Ps)


def group_replay(rng, X, Y, dom, S, subj=None):
    n = X.shape[0]
    sample_background(rng, n, S, dom)  # unused draw, kept: part of the seeded random stream
    photo, Ps, _ = source_photo(rng, X, Y, dom, S, base=subj)

    def u(lo, hi):
        return col(rng.uniform(lo, hi, n))

    # display transfer: white point, saturation boost, black level (backlight leak), brightness
    wp = (1 + rng.uniform(-0.04, 0.1, (n, 3)) * np.array([-1, 0, 1])).astype(F32)[:, :, None, None]
    lum = photo.mean(1, keepdims=True)
    sat = u(0.95, 1.3)[:, None]
    disp = np.clip(lum + (photo - lum) * sat, 0, 1) * wp
    disp = u(0.02, 0.07)[:, None] + (1 - u(0.02, 0.07)[:, None]) * disp
    emit = (disp**2.2) * u(0.45, 1.1)[:, None]
    # moire from screen pixel grid x camera sensor grid (aliased low-frequency beat)
    yy, xx = np.mgrid[0:S, 0:S].astype(F32)
    mo = np.zeros((n, S, S), F32)
    for _ in range(2):
        per = rng.uniform(3.0, 12.0, n)
        th = rng.uniform(0, np.pi, n)
        ph = rng.uniform(0, 2 * np.pi, n)
        mo += np.cos(2 * np.pi / col(per) * (xx * col(np.cos(th)) + yy * col(np.sin(th))) + col(ph))
    emit = emit * (1 + (dom["art"] * u(0.0, 0.12) * mo)[:, None])
    # glare: scene reflection on the glass
    gxy = rng.uniform(-0.8, 0.8, (n, 2))
    glare = (
        dom["art"]
        * u(0.0, 0.35)
        * np.exp(-0.5 * ((X - col(gxy[:, 0])) ** 2 + (Y - col(gxy[:, 1])) ** 2) / u(0.05, 0.4) ** 2)
    )
    emit = emit + glare[:, None] * np.array([1, 1, 1], F32)[None, :, None, None]
    D, _ = plane_depth(rng, n, X, Y, dom, bend_p=0.0)
    D = D * 0.6 + 0.5
    L = dict(
        D=D,
        fg=np.ones_like(D, bool),
        alb=np.full((n, 3, S, S), 0.04, F32),
        emit=emit.astype(F32),
        face=Ps["_face"],
        nir=np.full_like(D, 0.03),
        ks=np.full_like(D, 0.5),
        shin=F32(200.0),
        skin=np.zeros_like(D, bool),
        screen=np.ones_like(D, bool),
    )
    L["ks_ir"] = np.full_like(D, 3.0)
    L["shin_ir"] = F32(400.0)
    L["emit_ir"] = u(0.0, 0.03) * lum[:, 0]  # LCD/OLED emit ~no NIR: content invisible in IR
    # bezel visible for phones
    phone = rng.random(n) < 0.35
    bx = rng.uniform(0.7, 0.95, n)
    bez = (np.abs(X) > col(bx)) & col(phone.astype(F32)).astype(bool)
    L["alb"] = np.where(bez[:, None], 0.02, L["alb"])
    L["emit"] = np.where(bez[:, None], 0, L["emit"])
    L["nir"] = np.where(bez, 0.08, L["nir"])
    L["emit_ir"] = np.where(bez, 0, L["emit_ir"])
    return L, {}


MASK_TYPES = ["rigid", "silicone", "paper", "mannequin"]


def group_mask(rng, X, Y, dom, S, mtype, subj=None):
    n = X.shape[0]
    bg = sample_background(rng, n, S, dom)
    bgD = np.full((n, S, S), -9.0, F32)
    bg["D"] = bgD
    pose = sample_pose(rng, n, dom)
    Pw = sample_identity(rng, n, dom)  # wearer
    Pm = sample_identity(rng, n, dom, neutral=True, base=subj)  # mask = target identity, no expression
    for key in ("ex", "ey"):
        Pm[key] = Pw[key] * 0.7 + Pm[key] * 0.3  # eye holes must roughly match the wearer
    W = live_layers(rng, X, Y, Pw, pose, dom, bg)
    M = live_layers(rng, X, Y, Pm, pose, dom, bg)
    thick = {"rigid": 0.06, "silicone": 0.02, "paper": 0.08, "mannequin": 0.0}[mtype]
    Dm = M["D"] + thick
    x, y, _, _, inside_m, _ = image_to_head(X, Y, Pm, pose)
    if mtype == "mannequin":
        cover = M["fg"]
        hole = np.zeros_like(cover)
    else:
        scale = {"rigid": 0.93, "silicone": 1.0, "paper": 0.9}[mtype]
        e = (x / (Pm["ax"] * scale)) ** 2 + ((y - Pm["yc"] - 0.05) / (Pm["ay"] * scale)) ** 2
        cover = (e < 1) & inside_m
        hole = np.zeros_like(cover)
        for s in (-1, 1):
            hole |= ((x - s * Pm["ex"]) / 0.075) ** 2 + ((y - Pm["ey"]) / 0.035) ** 2 < 1
        cover &= ~hole

    # material appearance
    def u(lo, hi):
        return col(rng.uniform(lo, hi, n))

    if mtype == "paper":
        photo, _, _ = source_photo(rng, X, Y, dom, S, base=subj)
        alb, ink = print_transfer(rng, np.clip(photo * 1.35, 0, 1), dom["art"])
        nir = u(0.65, 0.92) * (1 - u(0.03, 0.85) * ink)
        ks, shin = 0.04, 20.0
    else:
        base = gblur(M["alb"], {"rigid": 1.2, "silicone": 0.8, "mannequin": 1.5}[mtype] * S / 64)
        lum = base.mean(1, keepdims=True)
        desat = {"rigid": u(0.5, 0.9), "silicone": u(0.75, 1.0), "mannequin": u(0.4, 0.8)}[mtype][:, None]
        alb = (lum + (base - lum) * desat) * (1 + rng.uniform(-0.12, 0.12, (n, 3, 1, 1)).astype(F32))
        nir_lo, nir_hi = {"rigid": (0.5, 0.9), "silicone": (0.28, 0.75), "mannequin": (0.45, 0.9)}[mtype]
        nir = u(nir_lo, nir_hi) * (1 + 0.05 * fnoise(rng, n, S, 2.0))
        paint_nir = rng.random(n) < 0.5  # carbon-based paint shows features in NIR, dye paint does not
        feat = np.clip(1 - M["alb"].mean(1) / (M["alb"].mean(1).max(axis=(1, 2), keepdims=True) + 1e-6), 0, 1)
        nir = nir * (1 - col(paint_nir.astype(F32)) * 0.5 * feat)
        ks, shin = {"rigid": (0.2, 30.0), "silicone": (0.12, 15.0), "mannequin": (0.3, 40.0)}[mtype]
    L = dict(W)
    L["D"] = np.where(cover, Dm, W["D"])
    L["alb"] = np.where(cover[:, None], alb, W["alb"])
    L["nir"] = np.where(cover, nir, W["nir"])
    L["ks"] = np.where(cover, F32(ks), W["ks"])
    L["fg"] = W["fg"] | cover
    L["face"] = W["face"] | cover
    L["skin"] = W["skin"] & ~cover
    L["sss"] = True
    L["facet_mask"] = cover if mtype == "paper" else None
    L["shin"] = F32(shin) if mtype != "paper" else F32(20.0)
    return L, dict(pose=pose)


def group_partial(rng, X, Y, dom, S, ptype, subj=None):
    n = X.shape[0]
    bg = sample_background(rng, n, S, dom)
    bg["D"] = np.full((n, S, S), -9.0, F32)
    pose = sample_pose(rng, n, dom)
    P = sample_identity(rng, n, dom, base=subj)  # the subject obfuscates their own face
    P["glasses"] = np.zeros_like(P["glasses"])
    L = live_layers(rng, X, Y, P, pose, dom, bg)
    pts_x = np.stack([-P["ex"].ravel(), P["ex"].ravel()], 1)
    pts_y = np.stack([P["ey"].ravel(), P["ey"].ravel()], 1)
    Xe, Ye, _ = head_to_image(pts_x, pts_y, np.full_like(pts_x, 0.75), pose)
    k = col(pose["k"])
    Xm, Ym = Xe.mean(1)[:, None, None], Ye.mean(1)[:, None, None]
    Dfront = L["D"].max(axis=(1, 2), keepdims=True) - 0.05
    if ptype == "paper_glasses":
        band = (np.abs(X - Xm) < 0.62 * k) & (np.abs(Y - Ym) < 0.11 * k)
        photo, _, _ = source_photo(rng, X + 0 * Xm, Y - Ym + col(rng.uniform(-0.15, -0.05, n)), dom, S)
        alb, ink = print_transfer(rng, photo, dom["art"])
        L["alb"] = np.where(band[:, None], alb, L["alb"])
        L["nir"] = np.where(
            band, col(rng.uniform(0.65, 0.9, n)) * (1 - col(rng.uniform(0.03, 0.85, n)) * ink), L["nir"]
        )
        L["D"] = np.where(band, Dfront + 0.02 * (X - Xm), L["D"])
    else:  # funny-eyes glasses: plastic cartoon eyes on a frame
        band = np.zeros_like(X, bool)
        for j in range(2):
            r = np.sqrt((X - Xe[:, j, None, None]) ** 2 + (Y - Ye[:, j, None, None]) ** 2) / (0.13 * k)
            disk = r < 1
            pup = (
                np.sqrt(
                    (X - Xe[:, j, None, None] - col(rng.uniform(-0.05, 0.05, n)) * k) ** 2
                    + (Y - Ye[:, j, None, None] - col(rng.uniform(-0.03, 0.05, n)) * k) ** 2
                )
                < 0.055 * k
            )
            L["alb"] = np.where(disk[:, None], np.where(pup[:, None], 0.01, 0.75), L["alb"])
            L["nir"] = np.where(disk, np.where(pup, col(rng.uniform(0.05, 0.6, n)), 0.8), L["nir"])
            band |= disk
        L["D"] = np.where(band, Dfront + 0.1, L["D"])
    L["ks"] = np.where(band, F32(0.05), L["ks"])
    L["skin"] = L["skin"] & ~band
    return L, dict(pose=pose)


# ----------------------------------------------------------------------------------------------
# sensor models
# ----------------------------------------------------------------------------------------------


def sensor_rgb(rng, rgb, dom):
    n, _, S, _ = rgb.shape

    def u(lo, hi):
        return rng.uniform(lo, hi, n).astype(F32)

    wb = (np.array(dom["rgb_cast"], F32)[None] * (1 + rng.normal(0, dom["cast_jitter"], (n, 3)))).astype(F32)
    x = rgb * wb[:, :, None, None] * col(u(*dom["exposure"]))[:, None]
    yy, xx = np.mgrid[0:S, 0:S].astype(F32) / (S / 2) - 1
    x = x * (1 - dom["vignette"] * (xx**2 + yy**2) / 2)
    x = lowres(x, dom["rgb_res"], dom["rgb_blur"] * S / 64)
    sig = np.sqrt(np.clip(x, 0, None) * dom["rgb_shot"] + dom["rgb_read"] ** 2)
    x = x + sig * rng.standard_normal(x.shape).astype(F32)
    x = np.clip(x, 0, 1) ** (1 / dom["rgb_gamma"])
    lum = x.mean(1, keepdims=True)
    x = np.clip(lum + (x - lum) * dom["rgb_sat"], 0, 1)
    u8 = (x * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    if dom["jpeg_rgb"]:
        u8 = jpeg(u8, rng.integers(*dom["jpeg_rgb"], n))
    return u8


def sensor_ir(rng, ir, L, dom, S):
    n = ir.shape[0]
    x = ir * dom["ir_gain"] * rng.uniform(0.85, 1.15, n).astype(F32)[:, None, None]
    if dom["ir_dots"] > 0:  # structured-light / active-stereo projector pattern visible in the IR stream
        dots = (rng.random((n, S, S)) < 0.15).astype(F32)
        x = x * (1 + dom["ir_dots"] * (gblur(dots, 0.5) * 4 - 0.3))
    if "glint" in L:
        x = x + 1.5 * L["glint"]
    yy, xx = np.mgrid[0:S, 0:S].astype(F32) / (S / 2) - 1
    x = x * (1 - dom["ir_vignette"] * (xx**2 + yy**2) / 2)
    x = lowres(x, dom["ir_res"], 0.3 * S / 64)
    x = x + dom["ir_noise"] * rng.standard_normal(x.shape).astype(F32) * np.sqrt(np.clip(x, 0.02, None))
    x = np.clip(x, 0, 1) ** (1 / dom["ir_gamma"])
    u8 = (x * 255 + 0.5).astype(np.uint8)
    if dom["jpeg_ir"]:
        u8 = jpeg(u8, rng.integers(*dom["jpeg_ir"], n))
    return u8


def sensor_depth(rng, dist, L, dom, S, nir_refl):
    n = dist.shape[0]
    z = lowres(dist, dom["d_res"], 0.0)
    # range-dependent noise (stereo / structured light ~ z^2)
    sig = dom["d_noise"] * (z / 50.0) ** 2
    z = z + sig * rng.standard_normal(z.shape).astype(F32)
    z = np.round(z / dom["d_quant"]) * dom["d_quant"]
    invalid = z > dom["d_max_cm"]
    # holes: low NIR return (dark hair, dark paint), depth edges (occlusion shadow), speculars, dropout
    inv_refl = nir_refl < dom["d_dark_thr"] * rng.uniform(0.7, 1.3, (n, 1, 1))
    if "screen" in L:
        inv_refl &= ~L["screen"]
    gy, gx = np.gradient(dist, axis=(-2, -1))
    edge = np.sqrt(gx**2 + gy**2) > dom["d_edge_cm"]
    edge &= rng.random((n, S, S)) < 0.7
    drop = gblur(rng.random((n, S, S)).astype(F32), 1.2 * S / 64) < dom["d_drop"]
    invalid |= inv_refl | edge | drop
    if "screen" in L:  # specular glass: invalid depth around the on-axis hotspot / random blobs
        blob = gblur(rng.random((n, S, S)).astype(F32), 3.0 * S / 64)
        frac = np.clip(dom["d_screen_holes"] * rng.uniform(0.3, 1.7, (n, 1, 1)), 0, 1)
        srt = np.sort(blob.reshape(n, -1), axis=1)
        thr = srt[np.arange(n), ((1 - frac.ravel()) * (S * S - 1)).astype(int)][:, None, None]
        invalid |= L["screen"] & (blob > thr)
    if "lens" in L:
        invalid |= (L["lens"] > 0) & (rng.random((n, S, S)) < 0.5)
    if dom["d_norm"] == "minmax":  # per-sample normalisation of the foreground range (near = bright)
        zf = np.where(L["face"] & ~invalid, z, np.nan)
        lo = np.nanpercentile(zf.reshape(n, -1), 2, axis=1)[:, None, None]
        hi = np.nanpercentile(zf.reshape(n, -1), 98, axis=1)[:, None, None]
        lo = np.where(np.isfinite(lo), lo, 40)
        hi = np.where(np.isfinite(hi), hi, 60)
        hi = np.maximum(hi, lo + dom["d_min_span_cm"])
        d = 0.15 + 0.85 * np.clip((hi - z) / (hi - lo), 0, 1)
    else:  # fixed working range
        near, far = dom["d_range_cm"]
        d = np.clip((far - z) / (far - near), 0, 1)
    d = np.where(invalid, 0.0, d)
    u8 = (d * 255 + 0.5).astype(np.uint8)
    if dom["jpeg_d"]:
        u8 = jpeg(u8, rng.integers(*dom["jpeg_d"], n))
    return u8


ATTACK_TYPES = (
    "print",
    "print_cut",
    "print_wrap",
    "replay",
    "mask_rigid",
    "mask_silicone",
    "mask_paper",
    "mask_mannequin",
    "partial_funny",
    "partial_paperglasses",
)
"""Every presentation-attack species the renderer draws (``attack_type`` strings; bona fide rows are "live")."""

# identity (per-subject) parameters; everything else drawn by ``sample_identity`` is per session / video
INTRINSIC_KEYS = (
    "ax",
    "ay",
    "yc",
    "az",
    "jaw",
    "ex",
    "ey",
    "socket",
    "eyeball",
    "brow",
    "yn",
    "nose_h",
    "nose_tip",
    "cheek",
    "ym",
    "mw",
    "lip",
    "chin",
    "hairline",
    "longhair",
    "hair_vol",
    "melanin",
    "redness",
    "hair_c",
    "iris_c",
    "brow_dark",
    "beard",
    "tex",
)


class VideoRNG:
    """Wraps a ``numpy.random.Generator`` so that every per-sample draw is made once per *video* and repeated
    over that video's frames: frames of one video share identity, attack instrument, lighting and textures.

    A draw whose leading dimension equals the number of frames ``n`` is drawn with ``n_videos`` rows instead and
    ``np.repeat``-ed by ``counts``; any other draw (scalars) passes through.
    """

    def __init__(self, rng, counts):
        self.rng = rng
        self.counts = np.asarray(counts, dtype=np.int64)
        self.n = int(self.counts.sum())
        self.nv = len(self.counts)

    def _draw(self, fn, size, *args, **kw):
        if size is None:
            return fn(*args, **kw)
        shp = (int(size),) if np.ndim(size) == 0 else tuple(int(v) for v in size)
        if shp and shp[0] == self.n:
            out = fn(*args, size=(self.nv,) + shp[1:], **kw)
            return np.repeat(out, self.counts, axis=0)
        return fn(*args, size=shp, **kw)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._draw(self.rng.uniform, size, low, high)

    def random(self, size=None):
        return self._draw(self.rng.random, size)

    def standard_normal(self, size=None):
        return self._draw(self.rng.standard_normal, size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._draw(self.rng.normal, size, loc, scale)

    def beta(self, a, b, size=None):
        return self._draw(self.rng.beta, size, a, b)

    def choice(self, a, size=None, p=None):
        return self._draw(self.rng.choice, size, a, p=p)

    def integers(self, low, high=None, size=None):
        return self._draw(self.rng.integers, size, low, high)


def render_group(rng, frng, kind, n, dom, S, subj=None):
    """Render ``n`` frames of one kind (``"live"`` or an entry of ``ATTACK_TYPES``) under profile dict ``dom``.

    ``rng`` draws the scene (a ``VideoRNG`` keeps it constant within a video), ``frng`` the per-frame
    camera shake and sensor noise; ``subj`` holds the per-frame rows of the subject table (the identity shown
    live, printed, replayed or moulded into a mask; the obfuscating subject for partial attacks).
    Returns uint8 rgb (n,S,S,3), depth (n,S,S), ir (n,S,S) and the float32 pseudo-depth target (n,S,S).
    """
    Xs = np.linspace(-1 + 1 / S, 1 - 1 / S, S, dtype=F32)
    X0 = np.broadcast_to(Xs[None, None, :], (n, S, S))
    Y0 = np.broadcast_to(Xs[None, :, None], (n, S, S))
    # per-frame camera shake: small similarity transform of the sampling grid (hand-held attacks, head motion)
    rot = np.deg2rad(frng.uniform(-2.0, 2.0, n)).astype(F32)
    sc = (1 + frng.uniform(-0.02, 0.02, n)).astype(F32)
    sh = frng.uniform(-0.015, 0.015, (n, 2)).astype(F32)
    cr, sr = col(np.cos(rot) * sc), col(np.sin(rot) * sc)
    X = (X0 * cr - Y0 * sr + col(sh[:, 0])).astype(F32)
    Y = (X0 * sr + Y0 * cr + col(sh[:, 1])).astype(F32)
    light = sample_light(rng, n, dom)
    facet = 0
    micro = 0.0
    if kind == "live":
        pose = sample_pose(rng, n, dom)
        P = sample_identity(rng, n, dom, base=subj)
        bg = sample_background(rng, n, S, dom)
        bg["D"] = np.full((n, S, S), -9.0, F32)
        L = live_layers(rng, X, Y, P, pose, dom, bg)
        L = add_glasses(L, P, pose, X, Y, P["glasses"].ravel() > 0)
        micro = 0.06
    elif kind in ("print", "print_cut", "print_wrap"):
        pose = sample_pose(rng, n, dom)
        L, _ = group_print(
            rng, X, Y, dom, S, cut=(kind == "print_cut"), wrap=(kind == "print_wrap"), subj=subj
        )
    elif kind == "replay":
        pose = sample_pose(rng, n, dom)
        L, _ = group_replay(rng, X, Y, dom, S, subj=subj)
    elif kind.startswith("mask_"):
        L, info = group_mask(rng, X, Y, dom, S, kind[5:], subj=subj)
        pose = info["pose"]
        if kind == "mask_paper":
            facet = max(4, S // 10)
    elif kind in ("partial_funny", "partial_paperglasses"):
        L, info = group_partial(
            rng, X, Y, dom, S, "funny" if kind == "partial_funny" else "paper_glasses", subj=subj
        )
        pose = info["pose"]
        micro = 0.04
    else:
        raise ValueError(f"render_group: unknown kind {kind!r}; expected 'live' or one of {ATTACK_TYPES}")
    pose = dict(pose)
    pose["dist"] = pose["dist"] + frng.uniform(-1.0, 1.0, n).astype(F32)  # per-frame distance jitter (cm)
    if kind != "live":  # attack sessions were captured under slightly different conditions
        cb = dom["attack_session"]
        pose["dist"] = pose["dist"] + cb["dist_cm"]
        light = dict(light)
        light["amb"] = light["amb"] * cb["rgb_gain"]
        light["key"] = light["key"] * cb["rgb_gain"]
        light["ir_amb"] = light["ir_amb"] + cb["ir_amb"]
        dom = dict(dom, ir_gain=dom["ir_gain"] * cb["ir_gain"])
    if "dist_override" not in L:
        L["dist_override"] = col(rng.uniform(*dom["bg_cm"], n)) * np.ones((n, S, S), F32)
    rgb, ir, dist = shade(L, light, pose, dom, S, rng, micro=micro, facet=facet)
    if facet and L.get("facet_mask") is not None:
        rgb2, ir2, _ = shade(L, light, pose, dom, S, rng, micro=micro, facet=0)
        fm = L["facet_mask"]
        rgb = np.where(fm[:, None], rgb, rgb2)
        ir = np.where(fm, ir, ir2)
    out_rgb = sensor_rgb(frng, rgb, dom)
    out_ir = sensor_ir(frng, ir, L, dom, S)
    out_d = sensor_depth(frng, dist, L, dom, S, L["nir"])
    if dom["bg_removed"]:  # dataset preprocessing: keep only the (detected) face region in all modalities
        fm = gblur(L["face"].astype(F32), 1.0 * S / 64) > 0.3
        out_rgb = (out_rgb * fm[..., None]).astype(np.uint8)
        out_d = (out_d * fm).astype(np.uint8)
        out_ir = (out_ir * fm).astype(np.uint8)
    # pseudo-depth supervision target (live: true relative depth of the face; spoof: zeros)
    if kind == "live":
        dd = np.where(L["fg"], dist, np.nan)
        lo = np.nanmin(dd, axis=(1, 2), keepdims=True)
        gt = np.where(L["fg"], np.clip(1 - (dist - lo) / 12.0, 0, 1), 0)
    else:
        gt = np.zeros_like(dist)
    return out_rgb, out_d, out_ir, gt.astype(F32)
