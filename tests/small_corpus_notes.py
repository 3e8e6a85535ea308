"""Thirty short Markdown notes (3-8 sentences each) in three folders: a user's own small corpus."""

from __future__ import annotations

from pathlib import Path

NOTES: dict[str, dict[str, str]] = {
    "space": {
        "Mars": "Mars is the fourth planet from the Sun. Its surface is red because of iron oxide in the dust. "
        "The planet has two small moons called Phobos and Deimos. A day on Mars lasts a little longer than a day "
        "on Earth. Olympus Mons on Mars is the tallest volcano in the solar system.",
        "Jupiter": "Jupiter is the largest planet in the solar system. It is a gas giant made mostly of hydrogen "
        "and helium. The Great Red Spot is a storm larger than the Earth. Jupiter has dozens of moons. Its strong "
        "gravity pulls many comets off their paths.",
        "The Moon": "The Moon is the only natural satellite of the Earth. It always shows the same face to us. "
        "Its phases repeat about every twenty-nine days. The Moon has almost no atmosphere. Astronauts first "
        "walked on its surface in 1969. Its gravity raises the tides of the oceans.",
        "Saturn": "Saturn is famous for its bright rings. The rings are made of ice and rock. Saturn is the "
        "second largest planet. Its density is lower than that of water. Titan, its largest moon, has a thick "
        "atmosphere.",
        "Comets": "Comets are small bodies of ice and dust. When a comet comes near the Sun, its ice turns to "
        "gas. The gas and dust form a long glowing tail. The tail always points away from the Sun. Halley's "
        "Comet returns about every seventy-six years.",
        "The Sun": "The Sun is a star at the centre of the solar system. It is a huge ball of hot plasma. Nuclear "
        "fusion in its core turns hydrogen into helium. The energy travels outward for thousands of years. Its "
        "light reaches the Earth in about eight minutes. Sunspots are cooler regions on its surface.",
        "Black holes": "A black hole is a region where gravity is so strong that nothing escapes. Not even light "
        "can leave it. Black holes form when massive stars collapse. The boundary around a black hole is called "
        "the event horizon. A supermassive black hole sits at the centre of our galaxy.",
        "Telescopes": "Telescopes collect light from distant objects. Refracting telescopes use lenses to bend "
        "light. Reflecting telescopes use curved mirrors instead. Larger mirrors gather more light and show "
        "fainter stars. Space telescopes avoid the blurring caused by the atmosphere. The Hubble telescope has "
        "orbited the Earth since 1990.",
        "Venus": "Venus is the second planet from the Sun. It is the hottest planet in the solar system. Thick "
        "clouds of sulfuric acid cover the whole planet. Its atmosphere traps heat through a strong greenhouse "
        "effect. Venus spins in the opposite direction to most planets.",
        "Eclipses": "An eclipse happens when one body blocks the light of another. In a solar eclipse the Moon "
        "passes between the Sun and the Earth. In a lunar eclipse the Earth's shadow falls on the Moon. A total "
        "solar eclipse turns day into a short twilight. Eclipses can be predicted centuries ahead.",
    },
    "nature": {
        "Honeybees": "Honeybees live in large colonies. Each colony has one queen that lays the eggs. Worker bees "
        "collect nectar and pollen from flowers. They turn nectar into honey and store it in wax cells. Bees "
        "tell each other where food is by dancing. Many crops depend on bees for pollination.",
        "Oak trees": "Oak trees can live for hundreds of years. Their fruit is the acorn. Squirrels and jays "
        "bury acorns and forget some of them. Forgotten acorns grow into new trees. The wood of the oak is hard "
        "and strong. It was used to build ships and houses.",
        "Wolves": "Wolves live and hunt in packs. A pack is usually a family led by a breeding pair. Wolves "
        "communicate with howls, scent and body language. They can travel long distances in a single night. "
        "Their main prey are deer and other large animals.",
        "Coral reefs": "Coral reefs grow in warm, shallow seas. They are built by tiny animals called polyps. The "
        "polyps live together with algae that make food from sunlight. Reefs shelter a quarter of all marine "
        "species. Warmer water can make corals lose their algae and turn white.",
        "Rivers": "Rivers carry water from high ground to the sea. They begin as springs, streams or melting "
        "glaciers. Over time a river carves valleys into the land. Near the sea many rivers split into a delta. "
        "Rivers have long been routes for trade and travel.",
        "Owls": "Owls are birds that hunt mostly at night. Their large eyes see well in dim light. Soft feathers "
        "let them fly almost without sound. Owls can turn their heads much further than people can. They swallow "
        "small prey whole and later bring up pellets of bone and fur.",
        "Deserts": "Deserts receive very little rain. Some deserts are hot, while others are cold. Plants such as "
        "cacti store water in their thick stems. Many desert animals are active only at night. Wind shapes the "
        "sand into long dunes. The Sahara is the largest hot desert.",
        "Mushrooms": "Mushrooms are the fruiting bodies of fungi. Most of the fungus lives hidden in the soil as "
        "thin threads. Fungi break down dead leaves and wood. Some mushrooms are good to eat. Others are deadly "
        "poisonous and look very similar. Fungi also help trees take up water and minerals.",
        "Whales": "Whales are mammals that live in the sea. They breathe air through a blowhole on top of the "
        "head. The blue whale is the largest animal that has ever lived. Some whales sing long songs that carry "
        "far under water. Many whales migrate between feeding and breeding grounds each year.",
        "Volcanoes": "A volcano is an opening where molten rock reaches the surface. The molten rock is called "
        "lava once it flows out. Ash from a large eruption can cool the climate for a year. Iceland has many "
        "active volcanoes. Volcanic soil is often very fertile. Scientists watch volcanoes for signs of an "
        "eruption. Some volcanoes have been quiet for thousands of years.",
    },
    "kitchen": {
        "Bread": "Bread is made from flour, water, salt and yeast. The yeast eats sugar and makes gas. The gas "
        "makes the dough rise. Kneading builds gluten, which gives bread its chewy texture. Baking sets the "
        "crumb and browns the crust. Sourdough uses wild yeast instead of bought yeast.",
        "Rice": "Rice is the main food of more than half the world. It grows in flooded fields called paddies. "
        "Brown rice keeps the outer bran layer. White rice has the bran removed. Rinsing rice before cooking "
        "removes extra starch.",
        "Coffee": "Coffee is brewed from roasted coffee beans. The beans are the seeds of a red fruit. Light "
        "roasts taste more acidic and fruity. Dark roasts taste more bitter and smoky. Coffee contains caffeine, "
        "which keeps people awake. Espresso is made by forcing hot water through fine grounds.",
        "Cheese": "Cheese is made from milk. Rennet or acid makes the milk separate into curds and whey. The "
        "curds are pressed and salted. Many cheeses are aged for months in cool cellars. Aging gives cheese a "
        "stronger flavour and a firmer texture.",
        "Tea": "Tea is made from the leaves of the tea plant. Green tea leaves are dried soon after picking. "
        "Black tea leaves are left to oxidise first. Tea was drunk in China for thousands of years. Water that "
        "is too hot can make green tea bitter.",
        "Soup": "Soup is a warm dish of food cooked in liquid. A good soup often starts with a stock. Stock is "
        "made by simmering bones or vegetables for hours. Onions, carrots and celery give many soups their base. "
        "Some soups are blended until smooth. Cold soups are popular in hot summers.",
        "Chocolate": "Chocolate comes from the beans of the cacao tree. The beans are fermented, dried and "
        "roasted. They are ground into a thick paste called cocoa liquor. Sugar and cocoa butter are added to "
        "make bars. Dark chocolate contains more cocoa than milk chocolate.",
        "Pasta": "Pasta is made from wheat flour and water or eggs. It comes in hundreds of shapes. Dried pasta "
        "keeps for a long time. Pasta should be cooked in plenty of salted boiling water. Cooked just firm to "
        "the bite, it is called al dente.",
        "Spices": "Spices are dried seeds, bark, roots or fruits used for flavour. Pepper, cinnamon and cloves "
        "were once worth more than gold. The search for spices drove long sea voyages. Toasting whole spices "
        "releases their aroma. Ground spices lose their flavour faster than whole ones.",
        "Fermentation": "Fermentation is the work of microbes on food. Yeast turns sugar into alcohol and gas. "
        "Bacteria turn milk into yogurt and cabbage into sauerkraut. Fermented foods keep longer than fresh "
        "ones. Many cultures have their own fermented dishes. Kimchi is a spicy fermented dish from Korea.",
    },
}


def write_notes(folder: Path) -> Path:
    """The notes as `folder/<domain>/<Title>.md`, each beginning with its `# Title` heading."""
    for domain, notes in NOTES.items():
        (folder / domain).mkdir(parents=True, exist_ok=True)
        for title, text in notes.items():
            (folder / domain / f"{title}.md").write_text(f"# {title}\n\n{text}\n", encoding="utf-8")
    return folder
