"""The original CHAIR's object words (Rohrbach et al. 2018, LisaAnne/Hallucination): its
`data/synonyms.txt` and the hard-coded rules of its `utils/chair.py`, as data.

`SYNONYM_LINES` holds the file's 80 lines exactly, one per COCO category, the category name
first; the original reads each with `line.strip().split(', ')`, so its quirks stay: entries
written twice, "televison", "phon", "solider", "knive", and entries the original can never match
(" motor bike" and " cheesecake" keep the space after a doubled separator; "iPhone" keeps its
capital while captions are lower-cased). "motor bike" is nevertheless one of the double words
below, so in the original it is consumed and counted as nothing (not motorcycle, not bicycle).
"""

from __future__ import annotations

SYNONYM_LINES: tuple[str, ...] = (
    ('person, girl, boy, man, woman, kid, child, chef, baker, people, adult, rider, children, '
     'baby, worker, passenger, sister, biker, policeman, cop, officer, lady, cowboy, bride, '
     'groom, male, female, guy, traveler, mother, father, gentleman, pitcher, player, skier, '
     'snowboarder, skater, skateboarder, person, woman, guy, foreigner, child, gentleman, '
     'caller, offender, coworker, trespasser, patient, politician, soldier, grandchild, '
     'serviceman, walker, drinker, doctor, bicyclist, thief, buyer, teenager, student, camper, '
     'driver, solider, hunter, shopper, villager'),
    'bicycle, bike, bicycle, bike, unicycle, minibike, trike',
    'car, automobile, van, minivan, sedan, suv, hatchback, cab, jeep, coupe, taxicab, limo, taxi',
    'motorcycle, scooter,  motor bike, motor cycle, motorbike, scooter, moped',
    ('airplane, jetliner, plane, air plane, monoplane, aircraft, jet, jetliner, airbus, '
     'biplane, seaplane'),
    'bus, minibus, trolley',
    'train, locomotive, tramway, caboose',
    'truck, pickup, lorry, hauler, firetruck',
    ('boat, ship, liner, sailboat, motorboat, dinghy, powerboat, speedboat, canoe, skiff, '
     'yacht, kayak, catamaran, pontoon, houseboat, vessel, rowboat, trawler, ferryboat, '
     'watercraft, tugboat, schooner, barge, ferry, sailboard, paddleboat, lifeboat, freighter, '
     'steamboat, riverboat, battleship, steamship'),
    'traffic light, street light, traffic signal, stop light, streetlight, stoplight',
    'fire hydrant, hydrant',
    'stop sign',
    'parking meter',
    'bench, pew',
    ('bird, ostrich, owl, seagull, goose, duck, parakeet, falcon, robin, pelican, waterfowl, '
     'heron, hummingbird, mallard, finch, pigeon, sparrow, seabird, osprey, blackbird, fowl, '
     'shorebird, woodpecker, egret, chickadee, quail, bluebird, kingfisher, buzzard, willet, '
     'gull, swan, bluejay, flamingo, cormorant, parrot, loon, gosling, waterbird, pheasant, '
     'rooster, sandpiper, crow, raven, turkey, oriole, cowbird, warbler, magpie, peacock, '
     'cockatiel, lorikeet, puffin, vulture, condor, macaw, peafowl, cockatoo, songbird'),
    'cat, kitten, feline, tabby',
    ('dog, puppy, beagle, pup, chihuahua, schnauzer, dachshund, rottweiler, canine, pitbull, '
     'collie, pug, terrier, poodle, labrador, doggie, doberman, mutt, doggy, spaniel, bulldog, '
     'sheepdog, weimaraner, corgi, cocker, greyhound, retriever, brindle, hound, whippet, husky'),
    ('horse, colt, pony, racehorse, stallion, equine, mare, foal, palomino, mustang, '
     'clydesdale, bronc, bronco'),
    'sheep, lamb, ram, lamb, goat, ewe',
    'cow, cattle, oxen, ox, calf, cattle, holstein, heifer, buffalo, bull, zebu, bison ',
    'elephant',
    'bear, panda',
    'zebra',
    'giraffe',
    'backpack, knapsack',
    'umbrella',
    'handbag, wallet, purse, briefcase',
    'tie, bow, bow tie',
    'suitcase, suit case, luggage',
    'frisbee',
    'skis, ski',
    'snowboard',
    'sports ball, ball',
    'kite',
    'baseball bat',
    'baseball glove',
    'skateboard',
    'surfboard, longboard, skimboard, shortboard, wakeboard',
    'tennis racket, racket',
    'bottle',
    'wine glass',
    'cup',
    'fork',
    'knife, pocketknife, knive',
    'spoon',
    'bowl, container',
    'banana',
    'apple',
    'sandwich, burger, sub, cheeseburger, hamburger',
    'orange',
    'broccoli',
    'carrot',
    'hot dog',
    'pizza',
    'donut, doughnut, bagel',
    'cake,  cheesecake, cupcake, shortcake, coffeecake, pancake',
    'chair, seat, stool',
    'couch, sofa, recliner, futon, loveseat, settee, chesterfield ',
    'potted plant, houseplant',
    'bed',
    'dining table, table, desk',
    'toilet, urinal, commode, toilet, lavatory, potty',
    'tv, monitor, televison, television',
    'laptop, computer, notebook, netbook, lenovo, macbook, laptop computer',
    'mouse',
    'remote',
    'keyboard',
    'cell phone, mobile phone, phone, cellphone, telephone, phon, smartphone, iPhone',
    'microwave',
    'oven, stovetop, stove, stove top oven',
    'toaster',
    'sink',
    'refrigerator, fridge, fridge, freezer',
    'book',
    'clock',
    'vase',
    'scissors',
    'teddy bear, teddybear',
    'hair drier, hairdryer',
    'toothbrush',
)
"""`data/synonyms.txt` of the original, line by line (category name first)."""

DOUBLE_WORDS: tuple[str, ...] = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "hot dog", "teddy bear", "home plate", "train track",
)
"""Word pairs the original reads as one word (`coco_double_words`): a pair that is no synonym
("home plate", "train track", "motor bike") is consumed and names nothing."""

ANIMAL_WORDS: tuple[str, ...] = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
                                 "bear", "zebra", "giraffe", "animal", "cub")
"""'baby <animal>' and 'adult <animal>' are the animal, not a person."""

VEHICLE_WORDS: tuple[str, ...] = ("jet", "train")
"""'passenger <vehicle>' is the vehicle, not a person."""


def double_word_rules() -> dict[str, str]:
    """The original's `double_word_dict`: word pair (singularised words) -> the word it reads
    as, built in the original's order (later rules win)."""
    rules = {pair: pair for pair in DOUBLE_WORDS}
    for animal in ANIMAL_WORDS:
        rules[f"baby {animal}"] = animal
        rules[f"adult {animal}"] = animal
    for vehicle in VEHICLE_WORDS:
        rules[f"passenger {vehicle}"] = vehicle
    rules["bow tie"] = "tie"
    rules["toilet seat"] = "toilet"
    rules["wine glas"] = "wine glass"  # Pattern singularises "glass" to "glas"
    return rules


def synonym_table() -> dict[str, str]:
    """The original's `inverse_synonym_dict`: every entry of `SYNONYM_LINES` -> its line's
    first entry (a word on two lines belongs to the later one, as in the original)."""
    table: dict[str, str] = {}
    for line in SYNONYM_LINES:
        words = line.strip().split(", ")
        for word in words:
            table[word] = words[0]
    return table
