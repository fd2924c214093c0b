"""A small file in the shape of ShareGPT4V's GPT-4V caption file, for tests and measurements.

``sharegpt4v_instruct_gpt4-vision_cap100k.json`` (102,025 rows; ``share-captioner_coco_lcs_sam_1246k_1107.json``
has the same shape) is what ``20kUmap`` is built from in the study. What this fixture copies from it:

* one JSON **list** (not JSON Lines), like the real file;
* every record single-turn: ``[{"from": "human", "value": PROMPT + "\\n<image>"}, {"from": "gpt", "value":
  CAPTION}]``, the ``<image>`` marker at the **end** of the human turn;
* the human turn is one of a small set of fixed caption prompts (:data:`CAPTION_PROMPTS`, ten of the real
  file's), so embedding the human turns clusters prompt templates, not content;
* GPT-4V-length captions: 100–300 words, word counts log-normal (median ``exp(5.07)`` ≈ 159 words, sigma 0.32)
  clipped to [100, 300]; at this vocabulary's ~5.6 characters a word that is a mean of ~940 characters (the
  real file's average; measured 942 over 4,000 captions), a median of ~890 and a long tail (99th percentile
  ~1,700, at most ~1,800). Captions are composed from one of :data:`SCENES` (its objects, colours, actions and
  setting words) so that embeddings of the assistant turns differ by content;
* image paths under the real roots: about half ``coco/train2017/000000xxxxxx.jpg`` (the seed kept 50,027 COCO
  rows of 102,025), the rest ``sam/images/sa_N.jpg``, ``llava/llava_pretrain/images/NNNNN/NNNNNNNNN.jpg``,
  ``wikiart/images/...``, ``share_textvqa/images/...``, ``web-celebrity/images/...``,
  ``web-landmark/images/...``; the record ``id`` is the image file's stem, as in the real file;
* small real JPEGs (64×64: gradients, solid colours with noise, and crops of scikit-image's photos), made
  deterministically from the seed, since ``data build`` decodes every image.

Output::

    OUT/sharegpt4v_instruct_gpt4-vision_cap100k.json
    OUT/images/<the records' image paths>

    vlm-sweep data caption-fixture --out OUT --n-rows 400 --seed 0
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_core.config import IMAGE_MARKER

CAPTION_FILE = "sharegpt4v_instruct_gpt4-vision_cap100k.json"
IMAGE_SIZE = 64
COCO_FRACTION = 50_027 / 102_025
"""The real file's COCO share (the seed's COCO filter kept 50,027 rows of 102,025)."""

CAPTION_PROMPTS: tuple[str, ...] = (
    "What do you see happening in this image?",
    "Can you describe the main features of this image for me?",
    "Analyze the image in a comprehensive and detailed manner.",
    "What's happening in the scene?",
    "Explain the visual content of the image in great detail.",
    "Write a detailed description of the given image.",
    "Describe the following image.",
    "What is this photo about?",
    "Can you elaborate on the elements of the picture provided?",
    "What are the key elements in this picture?",
)
"""Ten of the fixed caption prompts of ShareGPT4V's caption files (the human turn of every record)."""

# Non-COCO roots of the real file, with how a path under each is formed (k: a running number).
NON_COCO_ROOTS: tuple[tuple[str, str], ...] = (
    ("sam", "sam/images/sa_{k}.jpg"),
    ("llava", "llava/llava_pretrain/images/{d5:05d}/{k9:09d}.jpg"),
    ("wikiart", "wikiart/images/{artist}_{title}-{year}-{n}.jpg"),
    ("share_textvqa", "share_textvqa/images/{hex16}.jpg"),
    ("web-celebrity", "web-celebrity/images/{person}_{n}.jpg"),
    ("web-landmark", "web-landmark/images/{landmark}_{n}.jpg"),
)
_ARTISTS = ("claude-monet", "vincent-van-gogh", "pierre-auguste-renoir", "paul-cezanne", "edgar-degas")
_TITLES = ("the-garden", "still-life", "river-bank", "portrait-of-a-woman", "haystacks", "the-harbour")
_PEOPLE = ("Anne_Hathaway", "Morgan_Freeman", "Lionel_Messi", "Emma_Watson", "Jackie_Chan", "Serena_Williams")
_LANDMARKS = ("Eiffel_Tower", "Machu_Picchu", "Sydney_Opera_House", "Taj_Mahal", "Golden_Gate_Bridge",
              "Angkor_Wat", "Colosseum")

# Scenes: each caption describes one, so that captions (and their embeddings) differ by content.
SCENES: dict[str, dict[str, tuple[str, ...]]] = {
    "kitchen": {
        "place": ("a bright kitchen", "a small apartment kitchen", "a restaurant kitchen",
                  "a rustic farmhouse kitchen"),
        "objects": ("a stainless steel refrigerator", "a wooden cutting board", "a bowl of sliced apples",
                    "a kettle on the stove", "a rack of copper pans", "a loaf of fresh bread", "a blender",
                    "a jar of olive oil", "a microwave oven", "a stack of ceramic plates", "a bunch of bananas"),
        "people": ("a chef in a white apron", "a woman in a striped shirt", "a man with rolled-up sleeves",
                   "a child with flour on her hands"),
        "actions": ("stirring a pot of soup", "rolling out dough", "pouring coffee into a mug",
                    "slicing tomatoes on the counter", "reaching for a spice jar"),
        "details": ("steam rises from the pot", "tiles line the backsplash", "a window lets in morning light",
                    "herbs grow in a pot on the sill", "magnets cover the refrigerator door"),
    },
    "beach": {
        "place": ("a sandy beach", "a rocky coastline", "a tropical shore", "a crowded seaside boardwalk"),
        "objects": ("a striped umbrella", "a surfboard stuck in the sand", "a beach towel", "a sandcastle",
                    "a lifeguard tower", "seashells", "a palm tree", "a cooler", "a kite", "a sailboat"),
        "people": ("a surfer in a wetsuit", "a father with a bucket and spade", "a jogger along the waterline",
                   "a child in a sun hat"),
        "actions": ("riding a breaking wave", "playing volleyball", "sunbathing on a towel",
                    "wading into the shallow water", "flying a kite in the wind"),
        "details": ("waves roll onto the shore", "the horizon meets a hazy sky", "footprints cross the wet sand",
                    "gulls circle overhead", "the water shades from turquoise to deep blue"),
    },
    "street": {
        "place": ("a busy city street", "a quiet residential street", "a downtown intersection", "a narrow alley"),
        "objects": ("a red double-decker bus", "a yellow taxi", "a traffic light", "a fire hydrant",
                    "a row of parked bicycles", "a street sign", "a newspaper stand", "a parking meter",
                    "a storefront with an awning", "a lamp post"),
        "people": ("a cyclist in a helmet", "a pedestrian with an umbrella", "a police officer in a vest",
                   "a man in a grey coat"),
        "actions": ("crossing at the crosswalk", "hailing a cab", "riding a scooter past the shops",
                    "carrying shopping bags", "walking a dog on a leash"),
        "details": ("brick buildings line both sides", "the asphalt is wet from recent rain",
                    "neon signs glow in the shop windows", "a billboard towers above the corner",
                    "cars queue at the red light"),
    },
    "forest": {
        "place": ("a dense pine forest", "a misty woodland", "an autumn forest trail", "a mossy rainforest"),
        "objects": ("tall evergreen trees", "a fallen log", "a wooden footbridge", "a mushroom cluster",
                    "ferns", "a winding dirt path", "a trail marker", "a small stream", "a deer", "a squirrel"),
        "people": ("a hiker with a backpack", "a camper in a fleece jacket", "a photographer with a tripod",
                   "a ranger in a green uniform"),
        "actions": ("hiking up a steep trail", "setting up a tent", "crossing the stream on stepping stones",
                    "gathering firewood", "watching birds through binoculars"),
        "details": ("sunlight filters through the canopy", "leaves carpet the ground", "fog hangs between the trunks",
                    "moss covers the rocks", "the air looks cool and damp"),
    },
    "sports": {
        "place": ("a baseball stadium", "a tennis court", "a soccer field", "an indoor basketball arena"),
        "objects": ("a scoreboard", "a tennis racket", "a soccer ball", "a baseball bat", "a basketball hoop",
                    "goal posts", "a referee's whistle", "bleachers", "a water bottle", "a team banner"),
        "people": ("a pitcher in a blue cap", "a tennis player in white", "a goalkeeper in gloves",
                   "a fan waving a flag"),
        "actions": ("swinging at a fast pitch", "serving the ball", "diving to make a save",
                    "dribbling down the court", "celebrating a goal"),
        "details": ("the grass is freshly mowed in stripes", "floodlights brighten the field",
                    "chalk lines mark the boundaries", "players wear matching jerseys", "the stands are packed"),
    },
    "living_room": {
        "place": ("a cozy living room", "a modern lounge", "a sunlit family room", "a minimalist apartment"),
        "objects": ("a grey sofa", "a flat-screen television", "a coffee table", "a bookshelf full of novels",
                    "a potted fern", "a floor lamp", "a woven rug", "throw pillows", "a fireplace", "a remote control"),
        "people": ("a woman in a knitted sweater", "a man in reading glasses", "a girl in pyjamas",
                   "a teenager with headphones"),
        "actions": ("relaxing on the couch", "sipping tea by the window", "playing a board game",
                    "folding laundry", "napping under a blanket"),
        "details": ("framed photographs hang on the wall", "curtains frame a large window",
                    "the hardwood floor is polished", "a clock sits on the mantel", "warm light fills the room"),
    },
    "harbor": {
        "place": ("a busy harbor", "a fishing port", "a marina at sunset", "an industrial dock"),
        "objects": ("fishing boats", "a lighthouse", "stacked shipping containers", "a cargo crane", "coiled ropes",
                    "a wooden pier", "buoys", "a yacht", "lobster traps", "a ferry"),
        "people": ("a fisherman in rubber boots", "a sailor in a striped shirt", "a tourist on the promenade",
                   "a dock worker in a hard hat"),
        "actions": ("hauling nets onto the deck", "mooring a boat", "repairing a hull",
                    "watching the ferry depart", "casting a fishing line"),
        "details": ("gulls perch on the posts", "reflections ripple on the water", "the hulls are painted brightly",
                    "the tide is low", "masts sway in the breeze"),
    },
    "mountain": {
        "place": ("a snowy mountain range", "an alpine meadow", "a rocky canyon", "a glacier valley"),
        "objects": ("jagged peaks", "a frozen lake", "a ski lift", "a wooden cabin", "wildflowers", "a cairn",
                    "a snowboard", "boulders", "a waterfall", "a mountain goat"),
        "people": ("a skier in a red jacket", "a climber in a harness", "a shepherd with a crook",
                   "a snowboarder in goggles"),
        "actions": ("skiing down a steep slope", "climbing a rock face", "resting at the summit",
                    "crossing a snowfield", "pitching a tent on a ridge"),
        "details": ("clouds drift below the summit", "snow caps the highest ridges", "pine trees dot the slopes",
                    "the sky is a deep clear blue", "shadows stretch across the valley"),
    },
    "market": {
        "place": ("an outdoor farmers market", "a night market", "a covered bazaar", "a flower market"),
        "objects": ("crates of oranges", "baskets of spices", "hanging lanterns", "a fruit stall", "fresh fish on ice",
                    "bolts of colourful fabric", "price tags", "a cash register", "bouquets of tulips",
                    "jars of honey"),
        "people": ("a vendor in a straw hat", "a shopper with a canvas bag", "a boy in a red cap",
                   "an elderly woman with a shawl"),
        "actions": ("handing change to a customer", "arranging fruit in pyramids", "tasting a free sample",
                    "loading produce into a cart", "browsing the stalls"),
        "details": ("canopies shade the stalls", "hand-written signs list the prices", "the aisles are crowded",
                    "strings of lights hang overhead", "the produce looks fresh and glossy"),
    },
    "animals": {
        "place": ("a grassy savanna", "a farm pasture", "a zoo enclosure", "a backyard garden"),
        "objects": ("a giraffe", "a herd of zebras", "an elephant", "a brown horse", "a flock of sheep",
                    "a dog with a frisbee", "a cow", "a water trough", "a wooden fence", "a bird feeder"),
        "people": ("a farmer in overalls", "a zookeeper with a bucket", "a girl in rain boots",
                   "a veterinarian with a clipboard"),
        "actions": ("grazing on tall grass", "drinking from a pond", "running across the field",
                    "sleeping in the shade", "nuzzling a foal"),
        "details": ("acacia trees dot the plain", "dust rises from the dry ground", "the fence posts are weathered",
                    "the animals' coats shine in the sun", "hills roll in the distance"),
    },
}
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "white", "black", "grey", "brown", "pink",
           "teal", "golden", "silver", "beige", "crimson", "navy", "olive")
MOODS = ("calm", "lively", "peaceful", "bustling", "serene", "energetic", "relaxed", "festive", "quiet", "vibrant")
LIGHT = ("soft morning light", "harsh midday sun", "warm evening light", "overcast daylight", "golden-hour light",
         "artificial indoor lighting", "dim twilight")
VIEWS = ("from a low angle", "from slightly above", "at eye level", "from a distance", "in a close-up",
         "in a wide shot")
_SENTENCES = (
    "The image shows {place} captured {view}, bathed in {light}.",
    "In the foreground there is {obj}, its {colour} surface catching the light.",
    "Near the centre of the frame, {person} is {action}.",
    "Beside it, {obj2} adds a touch of {colour} to the composition.",
    "In the background, {detail}.",
    "The overall atmosphere is {mood}, suggesting an ordinary moment in {place}.",
    "To the left, {obj} rests close to {obj2}, and the two are arranged with some care.",
    "On the right side of the picture, {person} appears to be {action}, absorbed in the task.",
    "The colour palette is dominated by {colour} and {colour2} tones, which give the scene a {mood} feel.",
    "Further back, {detail}, while {obj} stands out against the {colour} backdrop.",
    "Details such as {obj} and {obj2} make it clear that this is {place}.",
    "There is no visible text in the image, and nothing obstructs the view of {obj}.",
    "Overall, the photograph conveys a {mood} mood, with {person} {action} as its focal point.",
)


def _word_count(rng: np.random.Generator) -> int:
    """GPT-4V caption length in words: log-normal (median e^5.07 ≈ 159, sigma 0.32) clipped to [100, 300]."""
    return int(np.clip(round(rng.lognormal(5.07, 0.32)), 100, 300))


def make_caption(rng: np.random.Generator, scene: str, n_words: int) -> str:
    """A caption of about ``n_words`` words (the last sentence is cut to the count) about ``scene``."""
    v = SCENES[scene]

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    words: list[str] = []
    while len(words) < n_words:
        s = pick(_SENTENCES).format(
            place=pick(v["place"]), view=pick(VIEWS), light=pick(LIGHT), obj=pick(v["objects"]),
            obj2=pick(v["objects"]), person=pick(v["people"]), action=pick(v["actions"]), detail=pick(v["details"]),
            colour=pick(COLOURS), colour2=pick(COLOURS), mood=pick(MOODS))
        words.extend(s.split())
    text = " ".join(words[:n_words])
    return text if text.endswith(".") else text.rstrip(",;") + "."


def _image_path(rng: np.random.Generator, k: int, coco: bool) -> str:
    if coco:
        return f"coco/train2017/{int(rng.integers(1, 581_930)):012d}.jpg"  # COCO train2017 numbers: 1..581929
    _, pattern = NON_COCO_ROOTS[k % len(NON_COCO_ROOTS)]
    return pattern.format(
        k=1000 + k * 37, d5=k // 100, k9=k * 1009 + 7, n=k,
        artist=_ARTISTS[k % len(_ARTISTS)], title=_TITLES[(k // 3) % len(_TITLES)], year=1860 + k % 60,
        hex16=f"{(k * 2654435761) % (1 << 64):016x}", person=_PEOPLE[k % len(_PEOPLE)],
        landmark=_LANDMARKS[k % len(_LANDMARKS)])


_PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def _photos() -> list[np.ndarray]:
    from skimage import data as skdata

    out = []
    for name in _PHOTO_NAMES:
        try:
            arr = getattr(skdata, name)()
        except Exception:  # noqa: BLE001 - a photo missing from this scikit-image build is skipped
            continue
        out.append(arr if arr.ndim == 3 else np.stack([arr] * 3, -1))
    return out


def make_image(rng: np.random.Generator, k: int, photos: list[np.ndarray]) -> Image.Image:
    """A 64×64 RGB image: a two-colour gradient, a noisy solid colour, or a crop of a scikit-image photo."""
    s = IMAGE_SIZE
    kind = k % 3 if photos else k % 2
    if kind == 2:
        photo = photos[int(rng.integers(len(photos)))][..., :3]
        y = int(rng.integers(0, photo.shape[0] - s))
        x = int(rng.integers(0, photo.shape[1] - s))
        return Image.fromarray(np.ascontiguousarray(photo[y:y + s, x:x + s]).astype(np.uint8))
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == 0:
        t = np.linspace(0, 1, s)[None, :, None] if k % 2 else np.linspace(0, 1, s)[:, None, None]
        arr = a * (1 - t) + b * t
        arr = np.broadcast_to(arr, (s, s, 3))
    else:
        arr = np.broadcast_to(a, (s, s, 3)) + rng.normal(0, 12, (s, s, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_caption_fixture(out: str | Path, n_rows: int = 400, seed: int = 0) -> dict:
    """Write ``OUT/sharegpt4v_instruct_gpt4-vision_cap100k.json`` and ``OUT/images/``; deterministic per seed.

    Returns ``{"rows", "coco_rows", "mean_caption_chars", "max_caption_chars", "mean_caption_words",
    "distinct_prompts", "source", "images"}``."""
    if not 1 <= n_rows <= 500_000:
        raise ValueError(f"n_rows must be in [1, 500000] (COCO numbers run out above), got {n_rows}")
    out = Path(out)
    images = out / "images"
    rng = np.random.default_rng(seed)
    photos = _photos()
    scenes = sorted(SCENES)
    records, seen = [], set()
    n_coco, chars, n_words = 0, [], []
    for k in range(n_rows):
        coco = bool(rng.random() < COCO_FRACTION)
        rel = _image_path(rng, k, coco)
        while rel in seen:  # non-COCO paths include k; a COCO number is drawn again on a collision
            rel = _image_path(rng, k, coco)
        seen.add(rel)
        n_coco += coco
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        words = _word_count(rng)
        caption = make_caption(rng, scenes[int(rng.integers(len(scenes)))], words)
        chars.append(len(caption))
        n_words.append(len(caption.split()))
        dst = images / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        make_image(rng, k, photos).save(dst, format="JPEG", quality=90)
        records.append({"id": Path(rel).stem, "image": rel,
                        "conversations": [{"from": "human", "value": f"{prompt}\n{IMAGE_MARKER}"},
                                          {"from": "gpt", "value": caption}]})
    out.mkdir(parents=True, exist_ok=True)
    source = out / CAPTION_FILE
    tmp = source.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(source)
    prompts = {r["conversations"][0]["value"] for r in records}
    return {"rows": n_rows, "coco_rows": n_coco, "mean_caption_chars": round(float(np.mean(chars)), 1),
            "max_caption_chars": int(max(chars)), "mean_caption_words": round(float(np.mean(n_words)), 1),
            "distinct_prompts": len(prompts), "source": str(source), "images": str(images)}
