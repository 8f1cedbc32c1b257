"""Words a caption may use for each of the 80 COCO object categories (for CHAIR).

`COCO_SYNONYMS[name]` lists singular words and phrases of up to three words; the first entry
is the category name itself. Plurals ("dogs", "people", "women", "mice") are handled by the
matcher in `evaluate.chair`, which singularises every caption word, and multi-word phrases
win over their parts by longest match ("hot dog" is a hot dog, "teddy bear" a teddy bear,
"microwave oven" a microwave, "sheep dog" a dog, "baby elephant" an elephant, not a person).

Choices made to keep false hallucinations down:
- words that are also sport or material names are left out: "baseball" / "football" (the
  game as often as the ball), bare "glass" (a "glass door"; "wine glass", "glass of wine"
  are kept), bare "bag", "seat", "board", "screen";
- drinking glasses other than wine glasses count as nothing (COCO labels them "cup" or
  "wine glass" inconsistently);
- person words cover people described by role ("skier", "player", "chef"), not groups
  ("crowd", "team", "couple").
"""

from __future__ import annotations

COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "person", "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "infant",
        "teenager", "teen", "youngster", "guy", "lady", "gentleman", "human",
        "player", "athlete", "skier", "snowboarder", "surfer", "skateboarder", "skater",
        "swimmer", "hiker", "runner", "rider", "biker", "cyclist", "bicyclist",
        "motorcyclist", "jockey", "cowboy", "pedestrian", "passenger", "driver", "pilot",
        "worker", "chef", "baker", "waiter", "waitress", "vendor", "customer", "shopper",
        "tourist", "spectator", "student", "teacher", "doctor", "nurse", "officer",
        "policeman", "policewoman", "soldier", "firefighter", "fireman", "farmer",
        "fisherman", "businessman", "business man", "catcher", "batter", "umpire", "referee",
        "goalie", "bride", "husband", "wife", "son", "daughter", "brother", "sister",
        "friend",
    ),
    "bicycle": ("bicycle", "bike", "mountain bike", "bmx"),
    "car": (
        "car", "automobile", "sedan", "suv", "taxi", "cab", "van", "minivan", "jeep",
        "hatchback", "convertible", "police car", "race car", "sports car",
    ),
    "motorcycle": (
        "motorcycle", "motor cycle", "motorbike", "motor bike", "dirt bike", "scooter",
        "moped",
    ),
    "airplane": (
        "airplane", "air plane", "aeroplane", "plane", "airliner", "jetliner", "jet",
        "jumbo jet", "aircraft", "biplane", "seaplane",
    ),
    "bus": ("bus", "school bus", "double decker", "double decker bus", "doubledecker",
            "minibus"),
    "train": (
        "train", "locomotive", "train car", "train engine", "railcar", "rail car", "boxcar",
        "caboose", "tram", "streetcar", "street car", "monorail",
    ),
    "truck": (
        "truck", "pickup truck", "pickup", "lorry", "firetruck", "fire truck", "dump truck",
        "tow truck", "semi truck", "tractor trailer", "truck bed",
    ),
    "boat": (
        "boat", "ship", "sailboat", "sail boat", "yacht", "canoe", "kayak", "ferry",
        "rowboat", "speedboat", "tugboat", "steamboat", "barge", "raft", "catamaran",
        "dinghy", "battleship", "jet ski", "jetski",
    ),
    "traffic light": ("traffic light", "stop light", "stoplight", "traffic signal"),
    "fire hydrant": ("fire hydrant", "hydrant", "fire plug", "fireplug"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter",),
    "bench": ("bench", "park bench", "pew"),
    "bird": (
        "bird", "baby bird", "pigeon", "dove", "seagull", "gull", "duck", "duckling",
        "goose", "swan", "parrot", "eagle", "hawk", "owl", "crow", "sparrow", "robin",
        "finch", "pelican", "flamingo", "penguin", "heron", "ostrich", "peacock", "hen",
        "rooster",
    ),
    "cat": ("cat", "kitten", "kitty", "feline", "house cat"),
    "dog": (
        "dog", "puppy", "pup", "doggy", "doggie", "hound", "poodle", "terrier", "labrador",
        "retriever", "bulldog", "bull dog", "pit bull", "pitbull", "pug", "beagle",
        "chihuahua", "dachshund", "collie", "corgi", "husky", "dalmatian", "greyhound",
        "german shepherd", "sheepdog", "sheep dog",
    ),
    "horse": ("horse", "baby horse", "pony", "foal", "colt", "mare", "stallion"),
    "sheep": ("sheep", "baby sheep", "lamb", "ewe"),
    "cow": ("cow", "baby cow", "cattle", "bull", "calf", "ox", "heifer", "longhorn"),
    "elephant": ("elephant", "baby elephant"),
    "bear": ("bear", "baby bear", "bear cub", "polar bear", "grizzly bear", "grizzly"),
    "zebra": ("zebra", "baby zebra"),
    "giraffe": ("giraffe", "baby giraffe"),
    "backpack": ("backpack", "back pack", "rucksack", "knapsack", "book bag", "bookbag"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse", "pocketbook", "tote bag", "shoulder bag"),
    "tie": ("tie", "necktie", "neck tie", "bow tie", "bowtie"),
    "suitcase": ("suitcase", "suit case", "luggage", "baggage"),
    "frisbee": ("frisbee", "flying disc", "flying disk"),
    "skis": ("skis", "ski"),
    "snowboard": ("snowboard", "snow board"),
    "sports ball": ("sports ball", "ball", "soccer ball", "tennis ball", "beach ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt", "baseball mitt"),
    "skateboard": ("skateboard", "skate board", "longboard", "long board"),
    "surfboard": (
        "surfboard", "surf board", "boogie board", "body board", "bodyboard", "paddle board",
        "paddleboard",
    ),
    "tennis racket": ("tennis racket", "racket", "racquet", "tennis racquet"),
    "bottle": ("bottle", "thermos"),
    "wine glass": (
        "wine glass", "wineglass", "glass of wine", "champagne glass", "glass of champagne",
        "goblet",
    ),
    "cup": ("cup", "mug", "teacup", "tea cup"),
    "fork": ("fork",),
    "knife": ("knife", "pocket knife"),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "hoagie", "panini"),
    "orange": ("orange", "tangerine", "clementine", "mandarin"),
    "broccoli": ("broccoli", "brocolli", "broccoli floret"),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog", "frankfurter", "corn dog", "chili dog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cup cake", "cheesecake"),
    "chair": ("chair", "armchair", "arm chair", "stool", "recliner", "high chair"),
    "couch": ("couch", "sofa", "loveseat", "love seat", "futon", "settee"),
    "potted plant": (
        "potted plant", "plant", "houseplant", "house plant", "flower pot", "flowerpot",
        "planter",
    ),
    "bed": ("bed", "bunk bed", "mattress"),
    "dining table": (
        "dining table", "table", "desk", "computer desk", "coffee table", "picnic table",
    ),
    "toilet": (
        "toilet", "toilet seat", "toilet bowl", "urinal", "commode", "porta potty",
    ),
    "tv": (
        "tv", "television", "tv set", "flat screen", "flatscreen", "flat screen tv",
        "monitor", "computer monitor", "computer screen",
    ),
    "laptop": ("laptop", "laptop computer", "computer", "netbook"),
    "mouse": ("mouse", "computer mouse"),
    "remote": (
        "remote", "remote control", "controller", "game controller", "wii remote",
        "wii controller", "wiimote",
    ),
    "keyboard": ("keyboard", "computer keyboard"),
    "cell phone": (
        "cell phone", "cellphone", "phone", "mobile phone", "smartphone", "smart phone",
        "telephone", "iphone",
    ),
    "microwave": ("microwave", "microwave oven"),
    "oven": ("oven", "stove", "stovetop", "stove top"),
    "toaster": ("toaster", "toaster oven"),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book", "novel", "textbook", "paperback"),
    "clock": ("clock", "clocktower", "clock tower", "alarm clock"),
    "vase": ("vase",),
    "scissors": ("scissors", "scissor"),
    "teddy bear": ("teddy bear", "teddy", "teddybear", "stuffed bear"),
    "hair drier": (
        "hair drier", "hair dryer", "hairdryer", "blow dryer", "blow drier", "blowdryer",
    ),
    "toothbrush": ("toothbrush", "tooth brush"),
}
"""COCO category name -> singular words/phrases naming it (first entry: the name)."""

NOT_OBJECT_PHRASES: tuple[str, ...] = (
    "bus stop", "bus station", "bus terminal",
    "train station", "train track", "train platform",
    "cable car",
    "chair lift",
    "ski slope", "ski lift", "ski resort",
    "flower bed",
    "toilet paper",
    "orange juice",
    "cd player", "dvd player", "record player",
)
"""Phrases that contain an object word but do not show that object: "people at a bus stop"
mentions no bus, a "cable car" is no car, a "chair lift" no chair, "toilet paper" can be on
a shelf without a toilet, and a "dvd player" is no person. The matcher consumes these words
without a mention. Phrases that imply the object is there anyway ("kite string", "toilet
seat", "truck bed") are not listed: they count as the object (some are synonyms above)."""
