"""Build `instructkit/data/default/instruction-data.json`, the project's own default instruction dataset,
`conversation-data.json`, the same records as conversations (system prompts, second turns), and
`preference-data.json`, the same records as preference pairs (the answer, and a plausible wrong one
that the task's own rule computes: a sum off by a little, another country's capital, the sentence
left uncorrected).

Run `python -m instructkit.data.build_default_data` to regenerate it; the output is deterministic and a test
checks the committed file equals it. Answers that can be computed (arithmetic, unit conversion,
sorting, counting, number words) are computed; the rest come from the hand-written tables below.
Every record is short, so the whole pipeline runs on a CPU in minutes.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUTPUT = Path(__file__).parent / "default" / "instruction-data.json"
CONVERSATIONS = Path(__file__).parent / "default" / "conversation-data.json"  # the same records as conversations
PREFERENCES = Path(__file__).parent / "default" / "preference-data.json"  # the same records as preference pairs
SEED = 20261122

ANTONYMS = [
    ("hot", "cold"), ("happy", "sad"), ("fast", "slow"), ("early", "late"), ("heavy", "light"),
    ("ancient", "modern"), ("generous", "selfish"), ("brave", "cowardly"), ("empty", "full"),
    ("increase", "decrease"), ("accept", "reject"), ("victory", "defeat"), ("wide", "narrow"),
    ("shallow", "deep"), ("rough", "smooth"), ("noisy", "quiet"), ("rare", "common"),
    ("expand", "contract"), ("visible", "invisible"), ("arrive", "depart"), ("strong", "weak"),
    ("polite", "rude"), ("cheap", "expensive"), ("begin", "end"), ("buy", "sell"),
    ("asleep", "awake"), ("wet", "dry"), ("inside", "outside"), ("tall", "short"),
    ("forget", "remember"), ("guilty", "innocent"), ("friend", "enemy"), ("question", "answer"),
    ("maximum", "minimum"), ("loose", "tight"), ("clean", "dirty"), ("future", "past"),
    ("success", "failure"), ("sharp", "blunt"), ("optimistic", "pessimistic"),
]

SYNONYMS = [
    ("big", "large"), ("quick", "fast"), ("begin", "start"), ("happy", "joyful"), ("smart", "intelligent"),
    ("angry", "furious"), ("tiny", "minuscule"), ("difficult", "hard"), ("buy", "purchase"),
    ("help", "assist"), ("shut", "close"), ("answer", "reply"), ("choose", "select"), ("end", "finish"),
    ("rich", "wealthy"), ("scared", "afraid"), ("shout", "yell"), ("gift", "present"),
    ("correct", "right"), ("calm", "peaceful"), ("brave", "courageous"), ("hide", "conceal"),
    ("tired", "exhausted"), ("odd", "strange"),
]

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasília"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("India", "New Delhi"), ("China", "Beijing"), ("Russia", "Moscow"),
    ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Portugal", "Lisbon"), ("Greece", "Athens"),
    ("Turkey", "Ankara"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"), ("Switzerland", "Bern"),
    ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Denmark", "Copenhagen"),
]

ELEMENTS = [
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"),
    ("sodium", "Na"), ("magnesium", "Mg"), ("aluminium", "Al"), ("silicon", "Si"), ("sulfur", "S"),
    ("chlorine", "Cl"), ("potassium", "K"), ("calcium", "Ca"), ("iron", "Fe"), ("copper", "Cu"),
    ("zinc", "Zn"), ("silver", "Ag"), ("gold", "Au"), ("mercury", "Hg"), ("lead", "Pb"),
    ("tin", "Sn"), ("neon", "Ne"), ("uranium", "U"), ("iodine", "I"),
]

DEFINITIONS = [
    ("photosynthesis", "the process by which plants use sunlight, water and carbon dioxide to make sugar and release oxygen"),
    ("democracy", "a system of government in which citizens choose their leaders by voting"),
    ("metaphor", "a figure of speech that describes something by calling it something else"),
    ("erosion", "the gradual wearing away of rock or soil by water, wind or ice"),
    ("inflation", "a general rise in prices that reduces what money can buy"),
    ("algorithm", "a finite sequence of steps for solving a problem"),
    ("habitat", "the natural home of an animal or plant"),
    ("evaporation", "the change of a liquid into a gas"),
    ("glacier", "a large, slowly moving mass of ice on land"),
    ("synonym", "a word that means the same or nearly the same as another word"),
    ("antonym", "a word that means the opposite of another word"),
    ("prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
    ("mammal", "a warm-blooded animal that has hair and feeds its young with milk"),
    ("biography", "an account of a person's life written by someone else"),
    ("fossil", "the preserved remains or traces of an ancient living thing"),
    ("ecosystem", "a community of living things together with their physical environment"),
    ("vaccine", "a substance that trains the immune system to fight a specific disease"),
    ("gravity", "the force that pulls objects with mass towards each other"),
    ("budget", "a plan for how money will be earned and spent"),
    ("peninsula", "a piece of land surrounded by water on three sides"),
    ("hypothesis", "a testable explanation proposed before an experiment"),
    ("verb", "a word that describes an action, state or occurrence"),
    ("noun", "a word that names a person, place, thing or idea"),
    ("volcano", "an opening in the earth's crust through which lava, ash and gas escape"),
    ("carnivore", "an animal that eats mainly meat"),
    ("herbivore", "an animal that eats mainly plants"),
    ("orbit", "the curved path of one object around another in space"),
    ("molecule", "a group of atoms bonded together"),
]

GRAMMAR = [
    ("She don't like apples.", "She doesn't like apples."),
    ("They was late for the meeting.", "They were late for the meeting."),
    ("He go to school every day.", "He goes to school every day."),
    ("I has two brothers.", "I have two brothers."),
    ("We is going to the park.", "We are going to the park."),
    ("The dogs barks loudly.", "The dogs bark loudly."),
    ("She have finished her homework.", "She has finished her homework."),
    ("Me and him went to the store.", "He and I went to the store."),
    ("There is three cats on the roof.", "There are three cats on the roof."),
    ("He runned to the bus stop.", "He ran to the bus stop."),
    ("I seen that movie yesterday.", "I saw that movie yesterday."),
    ("The childs are playing outside.", "The children are playing outside."),
    ("She is more taller than her sister.", "She is taller than her sister."),
    ("Their going to the beach tomorrow.", "They're going to the beach tomorrow."),
    ("Its a beautiful day.", "It's a beautiful day."),
    ("He don't know the answer.", "He doesn't know the answer."),
    ("The book was wrote in 1990.", "The book was written in 1990."),
    ("I am agree with you.", "I agree with you."),
    ("She can sings very well.", "She can sing very well."),
    ("We was happy to help.", "We were happy to help."),
    ("The team have won it's first match.", "The team has won its first match."),
    ("He bringed his lunch.", "He brought his lunch."),
    ("Who's book is this?", "Whose book is this?"),
    ("I didn't saw anything.", "I didn't see anything."),
    ("Less people came than expected.", "Fewer people came than expected."),
    ("She goed home early.", "She went home early."),
    ("The informations are correct.", "The information is correct."),
    ("He is a honest man.", "He is an honest man."),
]

FRUIT_OR_VEGETABLE = [
    ("apple", "fruit"), ("banana", "fruit"), ("carrot", "vegetable"), ("broccoli", "vegetable"),
    ("mango", "fruit"), ("spinach", "vegetable"), ("cherry", "fruit"), ("potato", "vegetable"),
    ("pear", "fruit"), ("onion", "vegetable"), ("grape", "fruit"), ("cabbage", "vegetable"),
    ("peach", "fruit"), ("lettuce", "vegetable"), ("plum", "fruit"), ("celery", "vegetable"),
]

ANIMAL_CLASSES = [
    ("dolphin", "mammal"), ("eagle", "bird"), ("salmon", "fish"), ("crocodile", "reptile"),
    ("frog", "amphibian"), ("elephant", "mammal"), ("penguin", "bird"), ("shark", "fish"),
    ("turtle", "reptile"), ("salamander", "amphibian"), ("bat", "mammal"), ("owl", "bird"),
    ("tuna", "fish"), ("lizard", "reptile"), ("whale", "mammal"), ("sparrow", "bird"),
]

SENTIMENT = [
    ("I absolutely loved this film, the acting was wonderful.", "Positive"),
    ("The food was cold and the service was slow.", "Negative"),
    ("This is the best purchase I have made all year.", "Positive"),
    ("The package arrived broken and nobody answered my emails.", "Negative"),
    ("What a delightful surprise, thank you so much!", "Positive"),
    ("I regret buying this phone; the battery dies in an hour.", "Negative"),
    ("The hotel staff were friendly and the room was spotless.", "Positive"),
    ("The lecture was boring and far too long.", "Negative"),
    ("Our guide made the trip unforgettable.", "Positive"),
    ("The app keeps crashing and I lost all my notes.", "Negative"),
    ("The new park is a lovely place to relax.", "Positive"),
    ("The traffic this morning was a nightmare.", "Negative"),
]

SUMMARIES = [
    ("Honeybees communicate the location of flowers through a movement called the waggle dance. "
     "The angle of the dance shows the direction relative to the sun, and its length shows the distance.",
     "Honeybees use the waggle dance to tell other bees the direction and distance of flowers."),
    ("The town library will close for renovation from March to June. During this time, books can be "
     "borrowed from a temporary branch in the community centre, which will open on weekdays only.",
     "The library closes for renovation from March to June, and a weekday-only temporary branch opens in the community centre."),
    ("Regular exercise strengthens the heart, improves sleep and lowers stress. Experts recommend at "
     "least 150 minutes of moderate activity per week, such as brisk walking or cycling.",
     "Exercise benefits the heart, sleep and stress, and experts recommend 150 minutes of moderate activity a week."),
    ("The Great Wall of China was built over many centuries by different dynasties. It was meant to "
     "protect northern borders from invasions and stretches for thousands of kilometres.",
     "Built over centuries to defend China's northern borders, the Great Wall stretches thousands of kilometres."),
    ("Our company will switch to a four-day work week in a six-month trial starting in January. "
     "Employees will keep the same salary, and productivity will be reviewed at the end of the trial.",
     "A six-month trial of a four-day week at the same salary starts in January, with a productivity review at the end."),
    ("Octopuses have three hearts and blue blood. Two hearts pump blood through the gills, while the "
     "third pumps it to the rest of the body.",
     "Octopuses have blue blood and three hearts: two serve the gills and one the rest of the body."),
    ("Heavy rain caused the river to overflow on Tuesday night, flooding several streets. No one was "
     "injured, and the council has opened a shelter at the primary school.",
     "Tuesday's flooding caused no injuries, and the council opened a shelter at the primary school."),
    ("Solar panels convert sunlight into electricity using semiconductor cells. Their cost has fallen "
     "sharply over the past decade, making them popular for homes and businesses.",
     "Solar panels turn sunlight into electricity and have become popular as their cost fell sharply."),
    ("The museum's new exhibition features over 200 ancient coins from the Roman Empire. It opens on "
     "Saturday and admission is free for students.",
     "A new exhibition of over 200 Roman coins opens Saturday, free for students."),
    ("Sleep helps the brain store memories. During deep sleep, information learned during the day is "
     "moved from short-term to long-term memory.",
     "Deep sleep moves the day's learning into long-term memory."),
    ("The bakery on Main Street has won the regional award for best bread for the third year in a "
     "row. The owner credits her grandmother's sourdough recipe.",
     "The Main Street bakery won the regional best-bread award for the third year, thanks to a family sourdough recipe."),
    ("Penguins cannot fly, but they are excellent swimmers. Their wings have evolved into flippers that "
     "let them reach speeds of up to 35 kilometres per hour underwater.",
     "Penguins cannot fly but swim fast, using flipper-like wings."),
    ("The city will add 40 kilometres of bike lanes over the next two years. Officials hope this will "
     "reduce traffic and encourage healthier travel.",
     "The city plans 40 km of new bike lanes in two years to cut traffic and promote healthy travel."),
    ("Tea was first drunk in China thousands of years ago. It spread to Japan and later to Europe, where "
     "it became especially popular in Britain.",
     "Tea began in China and spread to Japan and Europe, becoming especially popular in Britain."),
    ("The football match was postponed because of snow. It will now take place next Wednesday evening, "
     "and tickets remain valid.",
     "The snowed-off match moves to next Wednesday evening, and tickets stay valid."),
    ("Recycling one aluminium can saves enough energy to run a television for three hours. Aluminium "
     "can be recycled again and again without losing quality.",
     "Aluminium recycles endlessly without losing quality, and each can saves notable energy."),
    ("The school will start serving breakfast at 7:30 each morning. The meals are free and include "
     "fruit, cereal and milk.",
     "The school will serve free breakfasts of fruit, cereal and milk from 7:30 each morning."),
    ("Mount Everest grows by a few millimetres each year because the Indian plate keeps pushing under "
     "the Eurasian plate.",
     "Everest rises a few millimetres a year as the Indian plate pushes under the Eurasian plate."),
    ("The software update fixes a bug that drained the battery and adds a dark mode. It will be "
     "released to all users next week.",
     "Next week's update fixes a battery-draining bug and adds dark mode."),
    ("Camels store fat, not water, in their humps. The fat can be broken down for energy when food is "
     "scarce.",
     "A camel's hump stores fat that provides energy when food is scarce, not water."),
]

PAST_TENSE = [
    ("walk", "walked"), ("eat", "ate"), ("write", "wrote"), ("see", "saw"), ("go", "went"),
    ("play", "played"), ("buy", "bought"), ("swim", "swam"), ("read", "read"), ("take", "took"),
    ("sing", "sang"), ("build", "built"), ("drink", "drank"), ("teach", "taught"), ("fly", "flew"),
]
SUBJECTS = ["She", "He", "My brother", "The teacher", "Our neighbour", "The child"]
OBJECTS = {
    "walk": "to the market", "eat": "an apple", "write": "a letter", "see": "a rainbow",
    "go": "to the library", "play": "the piano", "buy": "new shoes", "swim": "in the lake",
    "read": "a novel", "take": "the train", "sing": "a song", "build": "a sandcastle",
    "drink": "a glass of water", "teach": "the class", "fly": "to Madrid",
}
THIRD_PERSON = {"go": "goes", "teach": "teaches", "fly": "flies"}

PASSIVE = [
    ("The cat chased the mouse.", "The mouse was chased by the cat."),
    ("The chef cooked the meal.", "The meal was cooked by the chef."),
    ("The students painted the mural.", "The mural was painted by the students."),
    ("The wind broke the window.", "The window was broken by the wind."),
    ("Maria wrote the report.", "The report was written by Maria."),
    ("The company hired ten engineers.", "Ten engineers were hired by the company."),
    ("The storm destroyed the bridge.", "The bridge was destroyed by the storm."),
    ("The gardener planted the roses.", "The roses were planted by the gardener."),
    ("The police caught the thief.", "The thief was caught by the police."),
    ("The committee approved the plan.", "The plan was approved by the committee."),
    ("The dog ate the sandwich.", "The sandwich was eaten by the dog."),
    ("Thousands of fans watched the final.", "The final was watched by thousands of fans."),
]

NAMES = ["Ana", "Ben", "Chloe", "David", "Elif", "Farah", "George", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Dublin", "Vienna", "Seoul", "Cairo", "Quito"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000, hyphenated as in 'forty-two'."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    rest = n % 100
    return ONES[n // 100] + " hundred" + (" and " + number_words(rest) if rest else "")


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def record(instruction: str, output: str, input_text: str = "") -> dict[str, str]:
    return {"instruction": instruction, "input": input_text, "output": output}


def arithmetic(rng: random.Random) -> list[dict]:
    out = []
    for _ in range(14):
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        out.append(record(f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
    for _ in range(10):
        a, b = rng.randint(50, 200), rng.randint(1, 49)
        out.append(record(f"Calculate {a} minus {b}.", f"{a} - {b} = {a - b}."))
    for _ in range(10):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        out.append(record(f"What is {a} times {b}?", f"{a} × {b} = {a * b}."))
    for _ in range(8):
        b, q = rng.randint(2, 12), rng.randint(2, 12)
        out.append(record(f"Divide {b * q} by {b}.", f"{b * q} ÷ {b} = {q}."))
    for _ in range(10):
        numbers = [rng.randint(1, 50) for _ in range(rng.randint(3, 5))]
        out.append(record("Add up the following numbers.", f"The sum is {sum(numbers)}.", ", ".join(map(str, numbers))))
    for _ in range(6):
        numbers = [rng.randint(2, 20) * 2 for _ in range(4)]
        mean = sum(numbers) / 4
        text = f"{mean:g}"
        out.append(record("Find the average of these numbers.", f"The average is {text}.", ", ".join(map(str, numbers))))
    return out


def unit_conversion(rng: random.Random) -> list[dict]:
    out = []
    for km in rng.sample(range(1, 40), 8):
        out.append(record(f"Convert {km} kilometres to metres.", f"{km} kilometres is {km * 1000} metres."))
    for kg in rng.sample(range(1, 30), 6):
        out.append(record(f"How many grams are in {kg} kilograms?", f"{kg} kilograms is {kg * 1000} grams."))
    for h in rng.sample(range(2, 24), 6):
        out.append(record(f"Convert {h} hours to minutes.", f"{h} hours is {h * 60} minutes."))
    for c in rng.sample(range(-20, 45, 5), 6):
        f = c * 9 / 5 + 32
        out.append(record(f"Convert {c} degrees Celsius to Fahrenheit.", f"{c} °C is {f:g} °F."))
    for m in rng.sample(range(100, 5000, 100), 6):
        out.append(record("Convert the distance to kilometres.", f"{m} metres is {m / 1000:g} kilometres.", f"{m} metres"))
    for litres in rng.sample(range(1, 20), 5):
        out.append(record("Convert the volume to millilitres.", f"{litres} litres is {litres * 1000} millilitres.", f"{litres} litres"))
    return out


def antonyms() -> list[dict]:
    out = []
    for i, (word, opposite) in enumerate(ANTONYMS):
        if i % 2:
            out.append(record("Give an antonym for the following word.", f"An antonym of '{word}' is '{opposite}'.", word))
        else:
            out.append(record(f"What is the opposite of '{word}'?", f"The opposite of '{word}' is '{opposite}'."))
    return out


def synonyms() -> list[dict]:
    out = []
    for i, (word, synonym) in enumerate(SYNONYMS):
        if i % 2:
            out.append(record("Provide a synonym for the given word.", f"A synonym for '{word}' is '{synonym}'.", word))
        else:
            out.append(record(f"What is a synonym for '{word}'?", f"A synonym for '{word}' is '{synonym}'."))
    return out


def definitions() -> list[dict]:
    out = []
    for i, (term, meaning) in enumerate(DEFINITIONS):
        if i % 3 == 2:
            out.append(record("Define the following term in one sentence.", f"The term '{term}' means {meaning}.", term))
        else:
            out.append(record(f"What does '{term}' mean?", f"The term '{term}' means {meaning}."))
    return out


def capitals() -> list[dict]:
    out = []
    for i, (country, capital) in enumerate(CAPITALS):
        if i % 3 == 2:
            out.append(record("Name the capital city of the given country.", f"The capital of {country} is {capital}.", country))
        else:
            out.append(record(f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
    return out


def chemical_symbols() -> list[dict]:
    out = []
    for i, (element, symbol) in enumerate(ELEMENTS):
        if i % 2:
            out.append(record("Give the chemical symbol for this element.", f"The chemical symbol for {element} is {symbol}.", element))
        else:
            out.append(record(f"What is the chemical symbol for {element}?", f"The chemical symbol for {element} is {symbol}."))
    return out


def grammar() -> list[dict]:
    return [record("Correct the grammar in the following sentence.", fixed, wrong) for wrong, fixed in GRAMMAR]


def rewriting(rng: random.Random) -> list[dict]:
    out = [record("Rewrite the sentence in the passive voice.", passive, active) for active, passive in PASSIVE]
    for verb, past in PAST_TENSE:
        subject = rng.choice(SUBJECTS)
        present = THIRD_PERSON.get(verb, verb + "s")
        out.append(record("Rewrite the sentence in the past tense.",
                          f"{subject} {past} {OBJECTS[verb]} yesterday.",
                          f"{subject} {present} {OBJECTS[verb]} every day."))
    for verb, _ in PAST_TENSE[:10]:
        subject = rng.choice(SUBJECTS)
        present = THIRD_PERSON.get(verb, verb + "s")
        out.append(record("Turn the statement into a yes/no question.",
                          f"Does {subject[0].lower() + subject[1:]} {verb} {OBJECTS[verb]}?",
                          f"{subject} {present} {OBJECTS[verb]}."))
    return out


def classification(rng: random.Random) -> list[dict]:
    out = [record("Classify the following as a fruit or a vegetable.", f"{item.capitalize()} is a {kind}.", item)
           for item, kind in FRUIT_OR_VEGETABLE]
    out += [record("Is the following animal a mammal, bird, fish, reptile or amphibian?", f"The {animal} is a{'n' if kind[0] in 'aeiou' else ''} {kind}.", animal)
            for animal, kind in ANIMAL_CLASSES]
    out += [record("Classify the sentiment of this review as Positive or Negative.", label, text) for text, label in SENTIMENT]
    for n in rng.sample(range(10, 500), 12):
        out.append(record(f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}."))
    for n in rng.sample(range(2, 100), 12):
        out.append(record(f"Is {n} a prime number?", f"{'Yes' if is_prime(n) else 'No'}, {n} is {'' if is_prime(n) else 'not '}a prime number."))
    return out


def extraction(rng: random.Random) -> list[dict]:
    out = []
    for name, city in zip(NAMES, CITIES):
        year = rng.randint(1950, 2020)
        out.append(record("Extract the year from the sentence.", str(year), f"{name} moved to {city} in {year}."))
    for name, city in zip(NAMES[::-1], CITIES):
        out.append(record("Extract the name of the city mentioned in the text.", city,
                          f"Last summer {name} spent two weeks in {city} visiting friends."))
    for name in NAMES[:8]:
        address = f"{name.lower()}.{rng.choice(['smith', 'khan', 'lopez', 'chen', 'novak'])}@example.org"
        out.append(record("Extract the email address from the text.", address,
                          f"For questions, please write to {address} before Friday."))
    for name in NAMES[4:12]:
        price = rng.randint(3, 90)
        item = rng.choice(["a lamp", "a book", "a scarf", "a kettle", "a backpack"])
        out.append(record("What price is mentioned in the sentence?", f"${price}", f"{name} bought {item} for ${price} at the market."))
    return out


def sorting(rng: random.Random) -> list[dict]:
    out = []
    for _ in range(10):
        numbers = rng.sample(range(1, 100), 5)
        out.append(record("Sort these numbers from smallest to largest.", ", ".join(map(str, sorted(numbers))), ", ".join(map(str, numbers))))
    for _ in range(8):
        words = rng.sample([w for w, _ in ANTONYMS + SYNONYMS], 4)
        out.append(record("Arrange the words in alphabetical order.", ", ".join(sorted(words)), ", ".join(words)))
    return out


def counting() -> list[dict]:
    out = []
    for text, _ in SENTIMENT[:10]:
        out.append(record("How many words are in the following sentence?", f"The sentence has {len(text.split())} words.", text))
    for word in ["banana", "mississippi", "letter", "committee", "balloon", "success", "bookkeeper", "coffee"]:
        letter = max(set(word), key=lambda c: (word.count(c), c))
        out.append(record(f"How many times does the letter '{letter}' appear in '{word}'?",
                          f"The letter '{letter}' appears {word.count(letter)} times in '{word}'."))
    return out


def comparison(rng: random.Random) -> list[dict]:
    out = []
    for _ in range(12):
        a, b = rng.sample(range(100, 1000), 2)
        out.append(record(f"Which number is larger, {a} or {b}?", f"{max(a, b)} is larger."))
    return out


def numbers_in_words(rng: random.Random) -> list[dict]:
    return [record("Write the number in words.", number_words(n).capitalize() + ".", str(n)) for n in rng.sample(range(21, 999), 16)]


def summaries() -> list[dict]:
    return [record("Summarize the following passage in one sentence.", summary, passage) for passage, summary in SUMMARIES]


KINDS = {
    "arithmetic": arithmetic,
    "unit_conversion": unit_conversion,
    "antonyms": lambda rng: antonyms(),
    "synonyms": lambda rng: synonyms(),
    "definitions": lambda rng: definitions(),
    "capitals": lambda rng: capitals(),
    "chemical_symbols": lambda rng: chemical_symbols(),
    "grammar": lambda rng: grammar(),
    "rewriting": rewriting,
    "classification": classification,
    "extraction": extraction,
    "sorting": sorting,
    "counting": lambda rng: counting(),
    "comparison": comparison,
    "numbers_in_words": numbers_in_words,
    "summarization": lambda rng: summaries(),
}


def build() -> dict[str, list[dict]]:
    """Records per kind of task, from one seeded generator; each record names its kind (`category`,
    as in Dolly), so the report can say which kinds of task a finetune got better or worse at."""
    rng = random.Random(SEED)
    return {kind: [{**r, "category": kind} for r in make(rng)] for kind, make in KINDS.items()}


SYSTEM_PROMPTS = (
    "You are a concise assistant. Answer in one sentence.",
    "You are a careful tutor. Give the exact answer.",
    "Answer plainly, without preamble.",
)
# Follow-up questions whose answers can be computed from the first exchange (a second user turn).
FOLLOW_UPS = (
    (re.compile(r"^What is (\d+) \+ (\d+)\?$"),
     lambda a, b: ("Now add 10 to that.", f"{int(a) + int(b)} + 10 = {int(a) + int(b) + 10}.")),
    (re.compile(r"^What is (\d+) times (\d+)\?$"),
     lambda a, b: ("And double that?", f"2 × {int(a) * int(b)} = {2 * int(a) * int(b)}.")),
    (re.compile(r"^Convert (\d+) kilometres to metres\.$"),
     lambda km: ("And how many centimetres is that?", f"{km} kilometres is {int(km) * 100000} centimetres.")),
    (re.compile(r"^Convert (\d+) hours to minutes\.$"),
     lambda h: ("And how many seconds?", f"{h} hours is {int(h) * 3600} seconds.")),
)


def conversation(index: int, record: dict) -> dict:
    """The record as an OpenAI `messages` conversation: every fifth with a system prompt, and a
    second, computed exchange where a follow-up question is natural."""
    user = f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[index // 5 % len(SYSTEM_PROMPTS)]}] if index % 5 == 0 else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    for pattern, follow_up in FOLLOW_UPS:
        if match := pattern.match(record["instruction"]):
            question, answer = follow_up(*match.groups())
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "category": record["category"]}


LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?!.*\d)", re.DOTALL)
# Categories whose answer is one entry of a table: the wrong answer is another entry of it.
TABLES = {
    "antonyms": [b for _, b in ANTONYMS], "synonyms": [b for _, b in SYNONYMS], "capitals": [c for _, c in CAPITALS],
    "chemical_symbols": [s for _, s in ELEMENTS], "definitions": [m for _, m in DEFINITIONS],
}
FLIPS = {"even": "odd", "odd": "even", "fruit": "vegetable", "vegetable": "fruit", "Positive": "Negative",
         "Negative": "Positive"}
ANIMAL_KINDS = ("mammal", "bird", "fish", "reptile", "amphibian")


def _nudged(match: re.Match, rng: random.Random) -> str:
    """A number a careless answer would give: off by one, two or ten."""
    text = match.group()
    step = rng.choice((-10, -2, -1, 1, 2, 10))
    return f"{float(text) + step:g}" if "." in text else str(int(text) + step)


def wrong_answer(record: dict, rng: random.Random) -> str:
    """A plausible wrong answer to a default record, computed by its category's rule."""
    kind, output, given = record["category"], record["output"], record["input"]
    if kind in TABLES:
        value = max((v for v in TABLES[kind] if output.rstrip(".'").endswith(v)), key=len)
        other = rng.choice([v for v in TABLES[kind] if v != value])
        cut = output.rstrip(".'")
        return cut[:len(cut) - len(value)] + other + output[len(cut):]
    if kind in ("grammar", "rewriting"):  # the sentence given back, the task not done
        return given
    if kind == "classification":
        if output.startswith(("Yes, ", "No, ")):  # is n prime
            n = output.split()[1]
            return f"No, {n} is not a prime number." if output.startswith("Yes") else f"Yes, {n} is a prime number."
        words = output.rstrip(".").split()
        if words[-1] in ANIMAL_KINDS:
            other = rng.choice([k for k in ANIMAL_KINDS if k != words[-1]])
            return " ".join(words[:-2] + ["an" if other[0] in "aeiou" else "a", other]) + "."
        return " ".join(words[:-1] + [FLIPS[words[-1]]]) + ("." if output.endswith(".") else "")
    if kind == "sorting":
        items = output.split(", ")
        i = rng.randrange(len(items) - 1)
        items[i], items[i + 1] = items[i + 1], items[i]
        return ", ".join(items)
    if kind == "comparison":
        a, b = re.findall(r"\d+", record["instruction"])
        return f"{min(int(a), int(b))} is larger."
    if kind == "numbers_in_words":
        return number_words(int(given) + rng.choice((-1, 1, 10))).capitalize() + "."
    if kind == "summarization":
        return given.split(". ")[0].rstrip(".") + "."  # the first sentence, not a summary
    if kind == "extraction" and not LAST_NUMBER.search(output):
        if output in CITIES:
            return rng.choice([c for c in CITIES if c != output])
        return output.split("@")[0] + "@example.com"  # the address with the wrong domain
    return LAST_NUMBER.sub(lambda m: _nudged(m, rng), output, count=1)  # arithmetic, units, counts, years, prices


def preference_pair(record: dict, rng: random.Random) -> dict:
    """The record in LLMs-from-scratch's preference form: the right answer chosen, a wrong one rejected."""
    return {"instruction": record["instruction"], "input": record["input"], "chosen": record["output"],
            "rejected": wrong_answer(record, rng), "category": record["category"]}


def main() -> None:
    records = [r for group in build().values() for r in group]
    random.Random(SEED).shuffle(records)
    OUTPUT.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} records to {OUTPUT}")
    conversations = [conversation(index, r) for index, r in enumerate(records)]
    CONVERSATIONS.write_text(json.dumps(conversations, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(conversations)} conversations to {CONVERSATIONS} "
          f"({sum(len(c['messages']) > 3 for c in conversations)} with a second exchange)")
    rng = random.Random(SEED)
    pairs = [preference_pair(r, rng) for r in records]
    PREFERENCES.write_text(json.dumps(pairs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(pairs)} preference pairs to {PREFERENCES}")


if __name__ == "__main__":
    main()
