"""A small English lexicon for Tag2Text-style caption parsing (see tags.py).

Tag2Text parses captions with a dependency parser and keeps objects/scenes, attributes and actions
(the Tag2Text paper). spaCy's models cannot be installed here, so the parser relies on these word lists plus
rules. Words are stored in their tag form: nouns singular, verbs in the base form. The procedural
scenes' shape, colour, size, material, pattern, wall, ground and sky words are all listed, and the
COCO object classes. Material nouns (stone, sand, brick) are also attributes: "a sand floor" gives
the attribute sand, "the sand" the object.
"""


def _words(text: str) -> frozenset[str]:
    return frozenset(w.replace("_", " ") for w in text.split())


OBJECTS = _words("""
circle square triangle rectangle shape cube sphere cylinder cone pyramid ball box disc disk ring
star torus block object background ground floor plane wall sky
person man woman boy girl child baby kid people player skier surfer rider crowd family couple
bicycle bike car motorcycle airplane plane bus train truck boat ship vehicle taxi van tractor
traffic_light fire_hydrant stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear
zebra giraffe animal pony puppy kitten duck chicken fish lion tiger monkey deer goat pig mouse
backpack umbrella handbag tie suitcase frisbee skis snowboard kite baseball_bat baseball_glove
skateboard surfboard tennis_racket racket bottle wine_glass glass cup fork knife spoon bowl plate
banana apple sandwich orange broccoli carrot hot_dog pizza donut cake food fruit vegetable meal
bread cheese egg salad coffee tea drink water
chair couch sofa potted_plant plant bed dining_table table desk toilet tv television laptop
computer keyboard cell_phone phone microwave oven toaster sink refrigerator fridge book clock
alarm_clock vase scissors teddy_bear hair_drier toothbrush lamp window door mirror shelf cabinet
pillow blanket curtain rug carpet painting poster frame sign screen camera
tree flower grass leaf bush forest field mountain hill rock stone sand beach sea ocean lake river
wave snow ice cloud sun moon road street sidewalk building house city bridge tower park garden
fence pole kitchen bathroom bedroom room office restaurant market shop store station airport
stadium court track table_cloth sunset sunrise night water_bottle
hat shirt jacket dress shoe boot glove coat helmet glasses sunglasses bag wallet watch
logo text pattern texture drawing wallpaper art design icon
head face hand arm leg eye hair
""")

ATTRIBUTES = _words("""
red green blue yellow purple orange pink brown black white gray grey silver gold golden beige
cyan magenta violet teal turquoise maroon navy tan colorful colourful
small large big little tiny huge giant tall short long wide narrow thick thin round flat square
triangular rectangular circular spherical pointed
metal metallic wooden wood plastic glass rubber stone paper fabric leather ceramic concrete
shiny matte glossy dull smooth rough striped spotted checkered dotted patterned plain textured
bright dark light pale transparent opaque clear
old young modern vintage empty full open closed wet dry clean dirty hot cold fresh
sunny cloudy snowy rainy foggy
abstract cute beautiful pastel speckled overcast evening
stone sand grass brick slate marble wood concrete tile tiled
""")

ACTIONS = _words("""
sit stand walk run ride fly eat drink hold play jump swim sleep lie look watch talk read write
cook cut carry throw catch hit kick climb surf ski skate drive park wear smile laugh pose wait
cross lean hang float fall grow rest graze fill cover stack
left_of right_of in_front_of next_to on_top_of above below behind beside under near
""")

#: Inflections the plural and verb rules cannot undo.
IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "knives": "knife",
    "leaves": "leaf",
    "shelves": "shelf",
    "wolves": "wolf",
    "skis": "skis",
    "glasses": "glasses",
    "sunglasses": "sunglasses",
    "scissors": "scissors",
    "lying": "lie",
    "sat": "sit",
    "stood": "stand",
    "ran": "run",
    "rode": "ride",
    "flew": "fly",
    "ate": "eat",
    "held": "hold",
    "wore": "wear",
    "hung": "hang",
    "fell": "fall",
    "grew": "grow",
    "caught": "catch",
    "threw": "throw",
    "drove": "drive",
    "swam": "swim",
    "slept": "sleep",
    "bigger": "big",
    "biggest": "big",
    "smaller": "small",
    "smallest": "small",
    "larger": "large",
    "largest": "large",
    "grey": "gray",
    "colourful": "colorful",
}

#: Words that never start, end or make a tag. Numbers and determiners also open a noun phrase.
DETERMINERS = _words("""
a an the this that these those its his her their our my your some any each every no several many
few both all another one two three four five six seven eight nine ten dozen
""")
STOPWORDS = DETERMINERS | _words("""
is are was were be been being am has have had do does did will would can could should may might
and or but with without of in on at to from by for into onto over as about than then there here
it they he she we you i me him them us what which who whom whose where when why how not
very so too also just only up down out off again partly mostly nearly almost more most other
such same own while during after before between through against among per via
photo image picture illustration clipart stock free download hd vector jpg jpeg png img dsc
untitled new cool render thing left right top bottom middle centre center front back side corner edge part
""")
